"""A batch's output file: one writer at a time, whole lines, and resume touching only its own.

* A run holds a POSIX record lock (``fcntl.lockf``, which NFS honours through lockd) on a sidecar
  ``OUT.lock`` while it runs, so a second run on the same OUT — fresh or ``--resume``, here or on
  another machine sharing the disk — is refused at once instead of duplicating rows. The lock is
  on a sidecar, not on OUT, because resume replaces OUT (``os.replace``) and a lock taken on the
  old file would not cover the new one. A killed run's lock is dropped by the OS.
* Resume reads OUT only if every complete line is one of eslabon's records, and drops a last line
  only if it is the start of one cut short; anything else is refused and the file left as it is.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import stat
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from eslabon.errors import UserError

__all__ = ["LineSink", "cannot_write", "finished_ids", "output_lock", "prepare_output"]

# Every record eslabon writes has these keys, and json.dumps puts "id" first.
RECORD_KEYS = frozenset({"id", "inputs", "output", "error"})
RECORD_START = b'{"id": '

# POSIX locks belong to the process: a second lockf from this process would succeed, and closing
# either descriptor would drop both. So runs inside one process are also checked here.
_HELD: set[str] = set()
_HELD_LOCK = threading.Lock()


def cannot_write(out: Path, exc: OSError) -> UserError:
    return UserError(f"cannot write {out}: {exc.strerror or exc}")


def prepare_output(out: Path, protect: Mapping[str, Path | None]) -> Path:
    """The path to write: OUT with symlinks resolved (so every name of it shares one lock), its
    folder created. Refuses OUT when it is one of ``protect`` (``{"the chain file": path}``)."""
    try:
        st: os.stat_result | None = os.stat(out)
    except FileNotFoundError:
        st = None
    except OSError as exc:  # e.g. a parent that is a regular file
        raise cannot_write(out, exc) from None
    if st is not None:
        for role, path in protect.items():
            if path is not None and _same_file(st, path):
                raise UserError(f"{out} is {role}; write the results to another file (-o)")
        if not stat.S_ISREG(st.st_mode):
            return out  # a device or pipe (/dev/stdout): written as given, nothing to lock
    target = Path(os.path.realpath(out))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # the parent exists and is not a folder
        raise cannot_write(out, OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))) from None
    except OSError as exc:
        raise cannot_write(out, exc) from None
    return target


def _same_file(st: os.stat_result, path: Path) -> bool:
    try:
        other = os.stat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (other.st_dev, other.st_ino)


def is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return True  # about to be created as one


@contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold OUT's sidecar lock, or refuse at once naming the run that holds it."""
    if not is_regular(out):
        yield  # nothing to resume or duplicate at rest in a device or pipe
        return
    path = out.with_name(out.name + ".lock")
    with _HELD_LOCK:
        if str(path) in _HELD:
            raise _busy(out, f"pid {os.getpid()} on {socket.gethostname()}")
        _HELD.add(str(path))
    try:
        fd = _acquire(out, path)
        try:
            yield
        finally:
            # Removed at the end so a finished batch leaves only OUT. Safe: the file is unlinked
            # while still locked, and a run that opened it before the unlink and locks it after
            # sees the path no longer names that file and starts over (see _acquire).
            if _names(path, fd):
                path.unlink(missing_ok=True)
            os.close(fd)
    finally:
        with _HELD_LOCK:
            _HELD.discard(str(path))


def _acquire(out: Path, path: Path) -> int:
    for _ in range(100):  # each retry means another run finished just now; bounded all the same
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise cannot_write(out, exc) from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                raise _busy(out, holder) from None
            raise cannot_write(out, exc) from None
        if _names(path, fd):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
            return fd
        os.close(fd)  # locked a lock file its run had just removed: take the new one
    raise _busy(out, "")


def _names(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino)


def _busy(out: Path, holder: str) -> UserError:
    who = f" ({holder})" if holder else ""
    return UserError(
        f"another eslabon batch{who} is writing {out}; wait for it to finish, or write to "
        "another file"
    )


def finished_ids(out: Path, retry_failed: bool) -> set[str]:
    """Ids OUT already holds, for resume. Drops a last line a crash cut short and, with
    ``retry_failed``, the lines of failed rows, so they run again. Refuses, touching nothing,
    unless every line is one eslabon wrote."""
    if not out.exists():
        return set()
    if not is_regular(out):
        raise UserError(f"{out} is not a regular file: --resume continues a batch's output file")
    data = out.read_bytes()
    *complete, tail = data.split(b"\n")
    records = [_record_or_refuse(out, n, line) for n, line in enumerate(complete, 1)]
    tail_record = _record(tail) if tail else None  # whole, only its newline missing: kept
    if tail and tail_record is None and not _torn(tail, after_records=bool(records)):
        _record_or_refuse(out, len(complete) + 1, tail)  # not the start of a record: refused
    lines = [*zip(complete, records, strict=True)]
    if tail_record is not None:
        lines.append((tail, tail_record))
    kept = [(line, r) for line, r in lines if not (retry_failed and r["error"] is not None)]
    try:
        if len(kept) < len(lines):
            _replace(out, b"".join(line + b"\n" for line, _ in kept))
        elif tail_record is not None:
            with out.open("ab") as f:
                f.write(b"\n")
        elif tail:
            os.truncate(out, len(data) - len(tail))  # the torn line goes, nothing else moves
    except OSError as exc:
        raise cannot_write(out, exc) from None
    return {str(r["id"]) for _, r in kept}


def _torn(tail: bytes, after_records: bool) -> bool:
    """Whether a last line without its newline is a record cut short: it starts as every record
    does (or, after records, is a shorter piece of that start) and is not whole JSON."""
    starts = tail.startswith(RECORD_START) or (after_records and RECORD_START.startswith(tail))
    if not starts:
        return False
    try:
        json.loads(tail.decode("utf-8"))
    except ValueError:
        return True
    return False  # whole JSON, yet not a record: someone else's line


def _record(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError included
        return None
    if not isinstance(record, dict) or not record.keys() >= RECORD_KEYS:
        return None
    if not isinstance(record["inputs"], dict):
        return None
    if record["error"] is not None and not isinstance(record["error"], dict):
        return None
    return record


def _record_or_refuse(out: Path, n: int, line: bytes) -> dict[str, Any]:
    record = _record(line)
    if record is None:
        shown = line.decode("utf-8", "replace")
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise UserError(
            f"{out}:{n}: not a record eslabon batch wrote ({shown!r}); --resume only continues "
            "a batch's own output, so the file was left untouched"
        )
    return record


def _replace(out: Path, data: bytes) -> None:
    # a temporary file beside OUT, synced before it replaces OUT: a crash leaves old or new
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=out.name + ".", suffix=".tmp")
    try:
        os.fchmod(fd, stat.S_IMODE(os.stat(out).st_mode))
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class LineSink:
    """OUT opened for appending whole lines: one unbuffered write per line, so a kill leaves
    whole lines plus at most one cut short. A failed write is a clear error naming OUT."""

    def __init__(self, out: Path) -> None:
        self.out = out
        try:
            self._fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        except OSError as exc:
            raise cannot_write(out, exc) from None

    def write(self, record: dict[str, Any]) -> None:
        data = (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode()
        try:
            while data:  # a write may be partial (a disk filling up): the rest, or the error
                written = os.write(self._fd, data)
                if not written:
                    raise OSError(errno.EIO, os.strerror(errno.EIO))
                data = data[written:]
        except OSError as exc:
            raise cannot_write(self.out, exc) from None

    def close(self) -> None:
        os.close(self._fd)
