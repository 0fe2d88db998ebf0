"""Precision: whether a device computes bf16 natively, and the one bf16 autocast context. A bottom-floor helper
(imports nothing of this repository). The precision decision is the caller's: a script decides once (``--amp``,
``--use_amp``) and wraps the work in :func:`autocast`; attacks and losses never decide it themselves."""
from __future__ import annotations

import contextlib
import functools

import torch


@functools.lru_cache(maxsize=None)
def _bf16_native(device_type: str) -> bool:
    if device_type == "cuda":  # Ampere or newer; older GPUs only emulate bf16
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch < 2.3 has no including_emulation
            return torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        return any(getattr(torch.cpu, c, lambda: False)() for c in checks)
    return False


def bf16_native(device: torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively: CUDA GPUs with bf16, CPUs with AMX or AVX512-BF16 (oneDNN).
    Elsewhere bf16 is emulated and slower than fp32, so autocast stays off."""
    return _bf16_native(torch.device(device).type)


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast when ``enabled`` and the device has native bf16 (:func:`bf16_native`); a no-op elsewhere. bf16
    keeps fp32's exponent range, so no GradScaler is needed."""
    device = torch.device(device)
    if enabled and bf16_native(device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
