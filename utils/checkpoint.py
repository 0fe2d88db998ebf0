"""Checkpoints: atomic writes, ``weights_only=True`` loads, RNG capture, clear errors, and the
:class:`Checkpointer` that owns a training run's files.

A checkpoint of this repository is a dict: the best model file holds::

    {"format": "robust-deform/2", "model": state_dict, "model_spec": {...}, "args": vars(args), "epoch": int,
     "context": {...}, "metrics": {...}}

(``model_spec``: the registry's record of the model, ``models.build_from_spec`` rebuilds it from the file alone)

and the resume state (``*.last.pt``) adds ``best``, ``best_file``, ``history``, ``optimizer``, ``scheduler``, ``rng``.

Loaders also accept a bare reference ``state_dict`` (what the FGR and GSeM authors' code saves).
"""
from __future__ import annotations

import hashlib
import math
import os
import pickle
import random
import re

import torch

from . import distributed as dist
from .errors import UserError
from .results import JsonLog, atomic_write, ensure_writable

FORMAT = "robust-deform/2"


def atomic_save(obj, path: str) -> None:
    """``torch.save`` through the one atomic writer (``utils.results.atomic_write``)."""
    atomic_write(path, lambda f: torch.save(obj, f))


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
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower():  # well-formed, but holding Python objects beyond tensors and plain data
            raise UserError(f"refused to load checkpoint {path}: it holds Python objects beyond tensors and plain "
                            f"data, which could run code when loaded; use a file saved by this repository or a plain "
                            f"state_dict") from None
        raise UserError(f"cannot read checkpoint {path}: it is corrupt ({str(e).splitlines()[0]})") from None
    except Exception as e:  # truncated zip, not a torch file
        raise UserError(f"cannot read checkpoint {path}: it is corrupt or not a PyTorch checkpoint "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        return obj
    if isinstance(obj, dict) and obj and all(torch.is_tensor(v) for v in obj.values()):
        return {"model": obj}
    raise UserError(f"cannot read checkpoint {path}: expected a state_dict or a dict with a 'model' state_dict")


def load_model_state(model: torch.nn.Module, state_dict: dict, source: str, model_name: str) -> None:
    """``load_state_dict(strict=True)`` with one readable message when the checkpoint does not fit the model or holds
    non-finite weights.

    Strips a ``module.`` (DataParallel/DDP) or ``_orig_mod.`` (torch.compile) prefix if every key has it."""
    for prefix in ("module.", "_orig_mod."):
        if state_dict and all(k.startswith(prefix) for k in state_dict):
            state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    bad = [k for k, v in state_dict.items() if torch.is_tensor(v) and v.is_floating_point() and not v.isfinite().all()]
    if bad:
        raise UserError(f"checkpoint {source} has non-finite weights ({len(bad)} tensors with NaN or inf, e.g. "
                        f"{bad[0]}): the run that wrote it diverged; its numbers would mean nothing")
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


class Checkpointer:
    """A training run's files: the best checkpoint, the resume state and the JSON log.

    Args:
        last_path: the full training state after the latest finished epoch (``--resume`` continues from it).
        log_path: the JSON log (args + one record per epoch).
        args: the run's settings (``vars(args)``), stored everywhere.
        result_keys: the settings that change the run's result (``utils.cli.Parser.result_flags``); a resume with
            another value of any of them is refused.
        best_path: the best checkpoint's path, or a function ``record -> path`` (e.g. the accuracy in the file name,
            as the GSeM reference names its checkpoints); when the name changes the previous best file is removed.
        select_key: the record entry that defines "best" (higher is better).
        select: ``'best'`` (the references' rule) or ``'last'`` (the latest epoch is written as the best file).
        best: the value to beat (the GSeM reference's ``--best_acc``).
        best_file: a starting best file (initial weights); never removed.
        best_pattern: a regular expression of the best files' names (default: the fixed ``best_path``'s). A file is
            removed only when it is the run's own: in the run's folder, named by this pattern, not ``best_file``;
            the resume state names the best file relative to the run's folder.
        total_epochs: the run's planned epochs; the model files then hold ``epochs`` and ``finished`` (False until
            the last epoch is saved, when the best file is marked True: a killed run's file says it is unfinished).

    ``context`` (a dict, set by the method, e.g. ``{"reload": 2}``) is added to every record and stored in the
    resume state: a resume continues only the epochs of the same context. Under torchrun only rank 0 writes.
    """

    def __init__(self, last_path: str, log_path: str, args: dict, *, result_keys, best_path,
                 select_key: str = "val_acc", select: str = "best", best: float = -math.inf,
                 best_file: str | None = None, best_pattern: str | None = None, total_epochs: int | None = None):
        if select not in ("best", "last"):
            raise ValueError(f"select must be 'best' or 'last', got {select!r}")
        self.last_path, self.args, self.best_path = last_path, args, best_path
        self.result_keys = list(result_keys)
        self.select_key, self.select = select_key, select
        self.best, self.best_file, self.keep = best, best_file, best_file
        self.folder = os.path.dirname(os.path.abspath(last_path))
        if best_pattern is None and callable(best_path):
            raise ValueError("a best_path function needs best_pattern (the names it makes)")
        self.best_pattern = best_pattern or re.escape(os.path.basename(best_path))
        self.context: dict = {}
        self.total_epochs = total_epochs
        self.log = JsonLog(log_path, args)
        self._state = None

    @property
    def history(self) -> list:
        return self.log.history

    def owns(self, path: str | None) -> bool:
        """Whether ``path`` is one of this run's best files (which the run may replace): in the run's folder, named by
        the run's pattern, and not the starting weights."""
        if not path or (self.keep and os.path.abspath(path) == os.path.abspath(self.keep)):
            return False
        return (os.path.dirname(os.path.abspath(path)) == self.folder
                and re.fullmatch(self.best_pattern, os.path.basename(path)) is not None)

    def _stored(self, path: str | None) -> str | None:
        """The best file as the resume state names it: relative to the run's folder when it is the run's own."""
        return os.path.basename(path) if self.owns(path) else path

    def _resolved(self, name: str | None) -> str | None:
        if name and not os.path.isabs(name) and os.sep not in name:
            return os.path.join(self.folder, name)
        return name

    def prepare(self, net, *, resume: bool, overwrite: bool) -> None:
        """Before any work: check that the output folders are writable and have room for the checkpoints of ``net``,
        and refuse to start over an earlier run of the same name unless ``resume`` (continue it) or ``overwrite``
        (its files are removed first) is given."""
        if not dist.is_main():
            return
        size = sum(v.numel() * v.element_size() for v in net.state_dict().values())
        fixed_best = None if callable(self.best_path) else self.best_path
        for folder in {os.path.dirname(os.path.abspath(p)) for p in (self.last_path, self.log.path, fixed_best) if p}:
            ensure_writable(folder, need_bytes=4 * size)  # best + last, with optimizer state
        earlier = [p for p in (self.last_path, self.log.path, fixed_best) if p and os.path.exists(p)]
        if not earlier or resume:
            return
        if not overwrite:
            raise UserError(f"{earlier[0]} exists: an earlier run of the same name. Add --resume to continue it or "
                            f"--overwrite to replace it")
        old_best = None
        if os.path.isfile(self.last_path):
            try:
                old_best = self._resolved(load_checkpoint(self.last_path).get("best_file"))
            except UserError:  # a corrupt resume state is replaced all the same
                pass
        for path in {*earlier, *([old_best] if self.owns(old_best) else [])} - {None, self.keep}:
            if os.path.isfile(path):
                os.remove(path)

    def load_last(self) -> dict | None:
        """Read the resume state (once), check its settings, and take over its best, best file and history.
        Returns the state, or None when there is none."""
        if self._state is None and os.path.isfile(self.last_path):
            state = load_checkpoint(self.last_path)
            missing = [k for k in ("args", "optimizer", "scheduler", "history", "epoch") if k not in state]
            if missing:
                raise UserError(f"{self.last_path} is not a resume state (it has no {', '.join(missing)}): a model "
                                f"file in the resume state's place? Move it away, or start over with --overwrite")
            changed = {k: (state["args"].get(k), self.args.get(k)) for k in self.result_keys
                       if state["args"].get(k) != self.args.get(k)}
            if changed:
                detail = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
                raise UserError(f"--resume: {self.last_path} was written with other settings ({detail})")
            self._state = state
            self.best, self.best_file = state["best"], self._resolved(state.get("best_file"))
            self.log.history = list(state["history"])
        return self._state

    def restore(self, net, optimizer, scheduler, generator=None) -> int:
        """Load the resume state into these objects if it belongs to the current ``context``.
        Returns the number of epochs already done in this context (0 when nothing was restored)."""
        state = self.load_last()
        if state is None:
            if dist.is_main():
                print(f"--resume: no state at {self.last_path}; starting from scratch", flush=True)
            return 0
        if state.get("context", {}) != self.context:
            return 0
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"], generator)
        return state["epoch"]

    def save(self, record: dict, net, optimizer, scheduler, generator=None) -> bool:
        """Record an epoch (``best_<key>`` and the context are added to ``record``): write the best checkpoint if it
        improved (or always, with ``select='last'``), then the resume state, then remove the replaced best file,
        then the JSON log, so the log never lists an epoch whose state is not on disk. Returns whether the key
        improved. Raises UserError when a file cannot be written (a full disk): nothing of the epoch is kept."""
        previous = (self.best, self.best_file)
        improved = record[self.select_key] > self.best
        self.best = max(self.best, record[self.select_key])
        record.update(self.context)
        record[f"best_{self.select_key}"] = self.best
        main = dist.is_main()
        self.log.history.append(record)
        model = {"format": FORMAT, "model": net.state_dict(), "model_spec": getattr(net, "model_spec", None),
                 "args": self.args, "epoch": record["epoch"], "context": dict(self.context), "metrics": record}
        if self.total_epochs:  # a model file says whether its run had finished when it was written
            model.update(epochs=self.total_epochs, finished=record["epoch"] >= self.total_epochs)
        path = self.best_file
        if self.select == "last" or improved:
            path = self.best_path(record) if callable(self.best_path) else self.best_path
        state = {**model, "best": self.best, "best_file": self._stored(path), "history": self.history,
                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state(generator)}
        try:
            if main and (self.select == "last" or improved):
                atomic_save(model, path)  # the model alone: what evaluation and warm restarts read
            if main:
                atomic_save(state, self.last_path)
        except OSError as e:
            self.log.history.pop()
            self.best, self.best_file = previous
            if main and path != previous[1] and self.owns(path) and os.path.isfile(path):
                os.remove(path)  # a new best file that no saved state names
            kept = f"the last good state is {self.last_path}" if self.history else "nothing was saved"
            raise UserError(f"cannot write the state of epoch {record['epoch']} ({e.strerror or e}); {kept}") from None
        if main and self.total_epochs and record["epoch"] >= self.total_epochs and path \
                and not (self.select == "last" or improved) and os.path.isfile(path):
            try:  # the run has finished: so has the best file written in an earlier epoch
                done = load_checkpoint(path)
                done["finished"] = True
                atomic_save(done, path)
            except (OSError, UserError) as e:
                raise UserError(f"cannot mark {path} finished ({e}); the state of the last epoch is saved in "
                                f"{self.last_path}") from None
        old, self.best_file = previous[1], path
        if main and self.owns(old) and os.path.abspath(old) != os.path.abspath(path) and os.path.isfile(old):
            os.remove(old)
        if main:
            try:
                self.log.write()
            except OSError as e:
                raise UserError(f"cannot write the log {self.log.path} ({e.strerror or e}); the state of epoch "
                                f"{record['epoch']} is saved in {self.last_path}") from None
        return improved
