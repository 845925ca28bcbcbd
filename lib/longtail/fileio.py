"""Atomic file writes: a reader sees the old file or the complete new one, never a partial one.

A write that fails (a full disk, a quota, an I/O error) removes its temporary file and raises an
``OSError`` whose message names the problem ("no space left on device") and the file.
Also: checksums, file locks, downloads, and ``one_line`` (an error message for a one-line report).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import tempfile
import urllib.request
import zlib
from pathlib import Path


def one_line(text, limit: int = 400) -> str:
    """``text`` (an error or its message) on one line, white space folded, at most ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def write_error(exc: OSError, path: str | os.PathLike, what: str = "") -> OSError:
    """The same error, its message naming the file and, for a full disk, saying so and what is free."""
    path = Path(path)
    what = f"{what} " if what else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            st = os.statvfs(path.parent if path.parent.exists() else ".")
            free = f"; {st.f_bavail * st.f_frsize / 1e6:.0f} MB free there"
        except OSError:
            free = ""
        kind = "no space left on device" if exc.errno == errno.ENOSPC else "disk quota exceeded"
        msg = (f"{kind} while writing {what}{path}{free}; free some space or point LT_CACHE_DIR / "
               f"LT_RUNS_DIR to a larger disk")
    else:
        msg = f"{exc.strerror or exc} while writing {what}{path}"
    new = OSError(msg)  # str() is the message alone (no "[Errno 28]" prefix, no repeated file name)
    new.errno = exc.errno  # (setting strerror too would bring the prefix back)
    return new


def _umask() -> int:
    """The process's umask, read without changing it where Linux allows (os.umask sets it, for all threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the file gets what open() would give it
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise write_error(exc, path) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def _jsonable(x):
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def file_checksum(path: str | os.PathLike, chunk: int = 1 << 22) -> dict:
    """``{"bytes": size, "crc32": hex}`` of a file: what a cache entry stores to be verified on read.
    CRC-32 (zlib) catches truncation and any accidental corruption at ~1 GB/s, about 4x faster than
    SHA-256 here (0.37 s vs 1.36 s for the 325 MB EU Moths image cache); caches need no defence
    against a deliberate forgery."""
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            crc = zlib.crc32(block, crc)
    return {"bytes": os.path.getsize(path), "crc32": f"{crc:08x}"}


def checksum_problem(path: str | os.PathLike, expected) -> str | None:
    """Why ``path`` does not match its stored ``file_checksum`` (None when it does)."""
    if not isinstance(expected, dict) or "bytes" not in expected or "crc32" not in expected:
        return "no checksum stored with it"
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if size != expected["bytes"]:
        return f"{size} bytes instead of {expected['bytes']} (truncated or overwritten)"
    if file_checksum(path)["crc32"] != expected["crc32"]:
        return "its contents do not match the stored checksum (corrupted)"
    return None


def sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download(url: str, dest: str | os.PathLike, expected_sha256: str | None = None) -> Path:
    """Download to a temporary file beside ``dest``, check the sha256, then rename."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    os.close(fd)
    try:
        urllib.request.urlretrieve(url, tmp)
        if expected_sha256 and sha256(tmp) != expected_sha256:
            raise RuntimeError(f"sha256 mismatch for {url}: expected {expected_sha256}, got {sha256(tmp)}")
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, wait: bool = True):
    """An exclusive lock on ``path`` + ".lock" (fcntl): parallel grid workers that need the same
    cache entry wait for the first one to write it instead of computing it twice.
    Yields True when held; with ``wait=False`` it yields False at once where another process holds it."""
    lock = Path(str(path) + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
