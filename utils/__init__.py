"""Shared code. Bottom floor (imported by attacks/ and models/, importing neither): runtime, flow, eot, distributed,
errors. Above them: data, losses, regularizers, awp, checkpoint, results, the training loop, evaluation, and the GSeM
training schedule."""
