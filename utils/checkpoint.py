"""Checkpoints: atomic writes, ``weights_only=True`` loads, RNG capture, and clear errors.

A checkpoint of this repository is a dict::

    {"model": state_dict, "args": vars(args), "epoch": int, "metrics": {...},
     "optimizer": ..., "scheduler": ..., "rng": {...}, "format": "robust-deform/1"}

Loaders also accept a bare reference ``state_dict`` (what the FGR and GSeM authors' code saves).
"""
from __future__ import annotations

import hashlib
import os
import random
import tempfile

import torch

from .errors import UserError

FORMAT = "robust-deform/1"


def atomic_save(obj, path: str) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``: a crash or kill at
    any moment leaves either the old file or the new one, never a half-written one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".pt", dir=folder)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def rng_state(generator: torch.Generator | None = None) -> dict:
    """Every RNG state a training run draws from (Python, torch CPU, CUDA, the data-order generator)."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["loader"] = generator.get_state()
    return state


def set_rng_state(state: dict, generator: torch.Generator | None = None) -> None:
    py = state["python"]  # weights_only loading turns the tuple's inner tuple into a list
    random.setstate((py[0], tuple(py[1]), py[2]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "loader" in state:
        generator.set_state(state["loader"])


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``. Returns a dict with at least ``"model"`` (a state_dict); a bare
    state_dict is wrapped as ``{"model": sd}``. Raises UserError for a missing or unreadable file."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, not a torch file, disallowed pickle content
        raise UserError(f"cannot read checkpoint {path}: it is corrupt or not a PyTorch checkpoint "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        return obj
    if isinstance(obj, dict) and obj and all(torch.is_tensor(v) for v in obj.values()):
        return {"model": obj}
    raise UserError(f"cannot read checkpoint {path}: expected a state_dict or a dict with a 'model' state_dict")


def load_model_state(model: torch.nn.Module, state_dict: dict, source: str, model_name: str) -> None:
    """``load_state_dict(strict=True)`` with one readable message when the checkpoint does not fit the model.

    Strips a ``module.`` (DataParallel/DDP) or ``_orig_mod.`` (torch.compile) prefix if every key has it."""
    for prefix in ("module.", "_orig_mod."):
        if state_dict and all(k.startswith(prefix) for k in state_dict):
            state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {shapes[0]})")
        raise UserError(f"checkpoint {source} does not match model {model_name!r}: " + "; ".join(parts)
                        + ". Check the model name and the number of classes (dataset).")
    model.load_state_dict(state_dict, strict=True)


def file_sha256(path: str, length: int = 16) -> str:
    """Short SHA-256 of a file (to record which checkpoint a result belongs to)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]
