"""Result files, written atomically: a crash or kill leaves the old file or the new one, never half of one.

- :func:`write_result` writes a record as ``<stem>.json`` and a markdown table beside it as ``<stem>.md``;
- :class:`JsonLog` is a training run's log: its args and one record per epoch, rewritten after each epoch.
"""
from __future__ import annotations

import json
import os
import tempfile

from . import distributed as dist


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


def write_json(path: str, obj) -> None:
    """``obj`` as indented JSON at ``path``, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


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
