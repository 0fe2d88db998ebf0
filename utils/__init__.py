"""Shared code: data, flow warps, regularizers, the training loop, checkpoints."""
