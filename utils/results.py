"""Result files, written atomically: a crash or kill leaves the old file or the new one, never half of one.

- :class:`ResultFile` is one checkpoint's evaluation results: rows merged at write time under a lock, so any number
  of evaluations of one checkpoint running at once keep every row;
- :func:`write_result` writes a record as ``<stem>.json`` and a markdown table beside it as ``<stem>.md``;
- :class:`JsonLog` is a training run's log: its args and one record per epoch, rewritten after each saved epoch.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile

from . import distributed as dist
from .errors import UserError

try:
    import fcntl
except ImportError:  # not POSIX: no lock (one evaluation of a checkpoint at a time)
    fcntl = None

FORMAT = 2  # the layout of evaluation result files (1: the two scripts' layouts before the shared pipeline)


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


def atomic_write(path: str, write) -> None:
    """The one atomic writer (result files, checkpoints): ``write(f)`` fills a temporary binary file in the folder of
    ``path``, which is flushed to disk and renamed over ``path``: a crash or kill at any moment leaves either the old
    file or the new one, never a half-written one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", dir=folder)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def finite_json(obj):
    """``obj`` with every non-finite float replaced by None, so that the JSON is strictly valid (no bare NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


_SCALARS = r"(?:true|false|null|-?[0-9][0-9.eE+-]*)"


def write_json(path: str, obj) -> None:
    """``obj`` as indented, strictly valid JSON at ``path`` (non-finite floats as null), atomically; a list of plain
    values (per-example flags and sizes) on one line."""
    text = json.dumps(finite_json(obj), indent=2, allow_nan=False)
    one_line = rf"\[\n\s+({_SCALARS}(?:,\n\s+{_SCALARS})*)\n\s*\]"  # raw newlines: never inside a JSON string
    text = re.sub(one_line, lambda m: "[" + re.sub(r",\n\s+", ", ", m.group(1)) + "]", text)
    atomic_write_text(path, text + "\n")


def write_result(path: str, record: dict, table: list[str]) -> str:
    """Write ``record`` to ``path`` (``.json``) and the markdown lines ``table`` to the same stem with ``.md``.

    Returns:
        the markdown file's path.
    """
    md = os.path.splitext(path)[0] + ".md"
    write_json(path, record)
    atomic_write_text(md, "\n".join(table) + "\n")
    return md


class JsonLog:
    """A JSON file holding the run's args and one record per epoch (``{"args": ..., "epochs": [...]}``)."""

    def __init__(self, path: str, args: dict, history: list | None = None):
        self.path, self.args, self.history = path, args, list(history or [])

    def write(self) -> None:
        """Rewrite the file with the records of ``history`` (after the caller saved the state they describe)."""
        write_json(self.path, {"args": self.args, "epochs": self.history})


@contextlib.contextmanager
def _locked(path: str):
    """An exclusive lock on ``<path>.lock`` for the duration (POSIX ``flock``; released if the process dies)."""
    if fcntl is None:
        yield
        return
    with open(path + ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _read(path: str):
    """The record at ``path``: None when there is none, ``{}`` when it cannot be read as a record (not JSON, not an
    object, rows that are not an object of objects)."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    if not isinstance(old, dict):
        return {}
    rows = old.get("rows", {})
    if not isinstance(rows, dict) or not all(isinstance(r, dict) for r in rows.values()):
        return {}
    return old


def _data(record: dict):
    data = record.get("data")
    return data.get("sha256") if isinstance(data, dict) else None


def _same_source(old: dict, record: dict) -> bool:
    """The same checkpoint evaluated on the same data (files of the earlier layout carry no data key)."""
    return old.get("checkpoint_sha256") == record["checkpoint_sha256"] and _data(old) == _data(record)


def _merge_cleans(old: dict, record: dict, mine: dict | None) -> None:
    """``record["cleans"]``: the clean accuracy per number of points evaluated (the file's and this run's; a subset is
    the first n test points), and ``record["clean"]``: the one on the most points, so a run on a subset never replaces
    the whole test set's clean accuracy."""
    cleans = {}
    for c in [old.get("clean"), *(old.get("cleans") or {}).values(), record.get("clean"), mine]:
        if isinstance(c, dict) and isinstance(c.get("n"), int) and "acc" in c:
            cleans[str(c["n"])] = c
    if cleans:
        record["cleans"] = dict(sorted(cleans.items(), key=lambda kv: int(kv[0])))
        record["clean"] = cleans[max(cleans, key=int)]


class ResultFile:
    """One checkpoint's results: a JSON file (and its markdown table) whose ``rows``, keyed by
    ``attacks.attack_label``, accumulate over runs. Every write re-reads the file under a lock, merges this run's
    rows into the rows on disk (a run replaces only rows it computed itself: same attack, same settings) and writes
    atomically, so evaluations of one checkpoint running in parallel keep every row.

    A file of another checkpoint (another SHA-256: it was retrained), of this checkpoint on other data (another
    fingerprint of the test images and labels), of the earlier layout, or unreadable is moved aside to
    ``<stem>.<reason>.json`` first, never overwritten.

    Args:
        path: the ``.json`` path.
        record: this run's header (must hold ``checkpoint_sha256``); ``record["rows"]`` receives the rows.
        say: where notes go.
        merge: ``merge(old_record, record)``, called under the lock before each write, after the rows are merged
            (``old_record`` is ``{}`` when the file is new), to settle the script's own header keys against the
            file's (e.g. keep a whole-test-set ``val_acc`` over a subset's).
    Attributes:
        earlier: the rows on disk when the run started (``--resume`` skips their labels).
    """

    def __init__(self, path: str, record: dict, say=print, merge=None):
        self.path, self.record, self.say, self.merge = path, record, say, merge
        record["format"] = FORMAT
        record.setdefault("rows", {})
        self.mine: set[str] = set()
        self.clean: dict | None = None  # this run's clean accuracy (``{"acc", "n", ...}``), set by the pipeline
        self.earlier: dict = {}
        if not dist.is_main():
            return
        with _locked(path):
            old = _read(path)
            if old is None:
                return
            if old.get("format") == FORMAT and _same_source(old, record):
                self.earlier = dict(old.get("rows", {}))
                return
            if old.get("format") != FORMAT and old:
                why, reason = "format1", "results in the earlier layout"
            elif old and old.get("checkpoint_sha256") == record["checkpoint_sha256"]:
                why = "data_" + re.sub(r"[^0-9A-Za-z]", "_", str(_data(old) or "unknown"))[:64]
                reason = "results of this checkpoint on other data (another --data_path or test set)"
            elif old:
                why = re.sub(r"[^0-9A-Za-z]", "_", str(old.get("checkpoint_sha256") or "unknown"))[:64]
                reason = "results of another checkpoint"
            else:
                why, reason = "unreadable", "no readable results (not a JSON object of rows)"
            stem = os.path.splitext(path)[0]
            aside = f"{stem}.{why}.json"
            os.replace(path, aside)
            if os.path.isfile(stem + ".md"):
                os.replace(stem + ".md", os.path.splitext(aside)[0] + ".md")
            say(f"note: {path} held {reason}; moved to {aside}")

    @property
    def rows(self) -> dict:
        return self.record["rows"]

    def add(self, label: str, row: dict) -> None:
        """A row this run computed (it replaces a row of the same label on disk at the next write)."""
        self.record["rows"][label] = row
        self.mine.add(label)

    def write(self, table) -> str:
        """Merge and write the record, and its markdown table ``table(record) -> lines`` (rank 0 only).
        Returns the markdown file's path."""
        md = os.path.splitext(self.path)[0] + ".md"
        if not dist.is_main():
            return md
        with _locked(self.path):
            old = _read(self.path) or {}
            if not _same_source(old, self.record) or old.get("format") != FORMAT:
                old = {}
            self.record["rows"] = {**old.get("rows", {}), **{k: self.rows[k] for k in self.mine}}
            _merge_cleans(old, self.record, self.clean)
            if self.merge is not None:
                self.merge(old, self.record)
            try:
                return write_result(self.path, self.record, table(self.record))
            except OSError as e:  # a full or vanished disk: the finished rows must survive somewhere
                rescue = os.path.join(tempfile.gettempdir(), os.path.basename(self.path))
                try:
                    write_json(rescue, self.record)
                    where = f"the finished rows are in {rescue}"
                except OSError:
                    where = "the finished rows could not be saved in the temporary folder either"
                raise UserError(f"cannot write {self.path} ({e.strerror or e}); {where}") from None
