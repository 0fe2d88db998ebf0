"""Result files, written atomically: a crash or kill leaves the old file or the new one, never half of one.

- :func:`write_result` writes a record as ``<stem>.json`` and a markdown table beside it as ``<stem>.md``;
- :class:`JsonLog` is a training run's log: its args and one record per epoch, rewritten after each epoch.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile

from . import distributed as dist
from .errors import UserError


def ensure_writable(folder: str, need_bytes: int = 0) -> None:
    """Create ``folder`` if needed and check, before any work, that a file can be written there and that
    ``need_bytes`` are free. Raises UserError otherwise."""
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp_", dir=folder)
        os.close(fd)
        os.remove(tmp)
    except OSError as e:
        raise UserError(f"cannot write to the output folder {folder}: {e.strerror or e}") from None
    free = shutil.disk_usage(folder).free
    if free < need_bytes:
        raise UserError(f"the output folder {folder} has {free / 2**20:.0f} MiB free; this run needs about "
                        f"{need_bytes / 2**20:.0f} MiB for its checkpoints")


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to a temporary file in the folder of ``path``, then rename it over ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def finite_json(obj):
    """``obj`` with every non-finite float replaced by None, so that the JSON is strictly valid (no bare NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def write_json(path: str, obj) -> None:
    """``obj`` as indented, strictly valid JSON at ``path`` (non-finite floats as null), atomically."""
    atomic_write_text(path, json.dumps(finite_json(obj), indent=2, allow_nan=False) + "\n")


def write_result(path: str, record: dict, table: list[str]) -> str:
    """Write ``record`` to ``path`` (``.json``) and the markdown lines ``table`` to the same stem with ``.md``; under
    torchrun only rank 0 writes.

    Returns:
        the markdown file's path.
    """
    md = os.path.splitext(path)[0] + ".md"
    if dist.is_main():
        write_json(path, record)
        atomic_write_text(md, "\n".join(table) + "\n")
    return md


class JsonLog:
    """A JSON file holding the run's args and one record per epoch (``{"args": ..., "epochs": [...]}``)."""

    def __init__(self, path: str, args: dict, history: list | None = None):
        self.path, self.args, self.history = path, args, list(history or [])

    def append(self, record: dict, write: bool = True) -> None:
        """Add an epoch record; rewrite the file when ``write`` (rank 0 under torchrun)."""
        self.history.append(record)
        if write:
            write_json(self.path, {"args": self.args, "epochs": self.history})


def row_label(attack: str, settings: dict, reference: dict, extra: dict | None = None) -> str:
    """A result row's key: the attack's name, plus ``[k=v, ...]`` for every setting that differs from the
    ``reference`` settings (the attack's defaults) and every entry of ``extra`` (e.g. ``{"n": 16}`` for a subset).
    ``flow`` alone therefore means the attack at its reference settings on the whole test set."""
    diff = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in {**settings, **(extra or {})}.items() if reference.get(k, object()) != v]
    return attack + (f" [{', '.join(diff)}]" if diff else "")


class ResultFile:
    """One checkpoint's results: a JSON file (and its markdown table) whose rows, keyed by :func:`row_label`,
    accumulate over runs: a run adds its rows and replaces only rows of the same key (same attack, same settings).
    If the file holds results of another checkpoint (another SHA-256: the checkpoint was retrained), it is moved
    aside to ``<stem>.<old sha>.json`` first, never overwritten.

    Args:
        path: the ``.json`` path.
        record: this run's header (must hold ``checkpoint_sha256``); ``record[rows_key]`` receives the rows.
        rows_key: the name of the rows' dict in the record (``attacks`` or ``results``).
        say: where notes go.
        carry: top-level keys whose earlier values are kept when this run leaves them None (``val_acc``, ...).
    """

    def __init__(self, path: str, record: dict, rows_key: str, say=print, carry=()):
        self.path, self.record, self.rows_key = path, record, rows_key
        old = None
        if os.path.isfile(path):
            try:
                with open(path) as f:
                    old = json.load(f)
            except (OSError, json.JSONDecodeError):
                old = {}
        rows = {}
        if old is not None and old.get("checkpoint_sha256") == record["checkpoint_sha256"]:
            rows = old.get(rows_key, {})
            for key in carry:
                if record.get(key) is None:
                    record[key] = old.get(key)
        elif old is not None and dist.is_main():
            stem = os.path.splitext(path)[0]
            aside = f"{stem}.{old.get('checkpoint_sha256') or 'unknown'}.json"
            os.replace(path, aside)
            if os.path.isfile(stem + ".md"):
                os.replace(stem + ".md", os.path.splitext(aside)[0] + ".md")
            say(f"note: {path} held results of another checkpoint; moved to {aside}")
        record[rows_key] = {**rows, **record.get(rows_key, {})}

    @property
    def rows(self) -> dict:
        return self.record[self.rows_key]

    def write(self, table: list[str]) -> str:
        """Write the record and its markdown table (rank 0). Returns the markdown file's path."""
        return write_result(self.path, self.record, table)
