"""Decode images once into a memory-mapped uint8 array on disk, so no epoch decodes a JPEG again.

Every image is resized so its shorter side is ``size`` and centre-cropped to ``size x size``
(the usual eval geometry; training crops are taken later from this square).  The cache is a
``.npy`` file keyed by the image files (path, byte size, mtime) and ``size``; it is written to a
temporary file and renamed, so an interrupted build never leaves a cache that looks complete.
The ``.json`` beside it (written last) holds the array's size and checksum, verified on every read
(about 0.4 s for the 325 MB EU Moths training cache); a bad entry (truncated, corrupted) is decoded
again, with a one-line warning naming the file.  A caller that may not need the pixels at all (a
linear run whose features are cached) takes ``decoded_images_on_use``: the check is paid at the
first read of the images, by a run that reads them.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
import numpy as np

from . import config
from .fileio import atomic_write_text, checksum_problem, file_checksum, file_lock, write_error

ON_ERROR = ("raise", "skip")


class ImageDecodeError(RuntimeError):
    pass


def decode_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """One image as uint8 [size, size, 3]: shorter side resized to ``size``, centre crop."""
    from PIL import Image  # here: a run whose images are cached never decodes one
    with Image.open(path) as img:
        img.draft("RGB", (size, size))  # lets libjpeg decode at a reduced scale: much faster
        img = img.convert("RGB")
        w, h = img.size
        scale = size / min(w, h)
        if (w, h) != (size, size):
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            img = img.resize((nw, nh), Image.BILINEAR, reducing_gap=None if scale > 0.5 else 2.0)
            left, top = (nw - size) // 2, (nh - size) // 2
            img = img.crop((left, top, left + size, top + size))
        return np.asarray(img, dtype=np.uint8)


def cache_key(paths, size: int) -> str:
    h = hashlib.sha1(f"v2|{size}|".encode())  # v2: entries carry a checksum
    for p in paths:
        st = os.stat(p)
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def decoded_images(paths, size: int, *, on_error: str = "raise", cache: str | os.PathLike | None = None,
                   workers: int | None = None, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images, kept)``: a read-only memory map uint8 [len(kept), size, size, 3] and the
    indices into ``paths`` of the images it holds (all of them unless ``on_error="skip"``).

    ``on_error="raise"`` stops at the first unreadable image with an error naming the file;
    ``"skip"`` leaves such images out and warns once, listing every skipped file.
    """
    paths, stem = _entry(paths, size, on_error, cache)
    array_file, meta_file = stem.with_suffix(".npy"), stem.with_suffix(".json")
    meta, problem = _verified_meta(array_file, meta_file)
    if problem is not None:
        with file_lock(stem):  # parallel workers: one decodes, the others wait and read
            meta, problem = _verified_meta(array_file, meta_file)
            if problem is not None:
                if meta_file.exists() or array_file.exists():
                    warnings.warn(f"image cache {array_file}: {problem}; decoding the images again", stacklevel=2)
                meta_file.unlink(missing_ok=True)
                _decode_all(paths, size, array_file, meta_file, on_error, workers, progress)
                meta, problem = _verified_meta(array_file, meta_file)
                if problem is not None:
                    raise OSError(f"image cache {array_file}: {problem} right after it was written")
    _warn_skipped(meta["skipped"])
    return np.load(array_file, mmap_mode="r"), np.asarray(meta["kept"], dtype=np.int64)


def decoded_images_on_use(paths, size: int, *, on_error: str = "raise", cache: str | os.PathLike | None = None,
                          workers: int | None = None, progress: bool = True):
    """``decoded_images`` for a caller that may not read the pixels (a linear run whose features are
    cached): ``(load, kept)``, where ``load()`` gives the images, verified against their checksum (and
    decoded again when bad) at its first call, and ``kept`` is read from the entry's description
    without reading the array.  An entry without a readable description, or whose array has not the
    stored size, is decoded or verified now, as ``decoded_images`` does.

    ``kept`` taken from the description is the one a verified entry gives: the description is written
    after its array, and decoding the same files (the entry's key holds their sizes and mtimes) again
    keeps the same images; ``load`` checks that it does."""
    paths, stem = _entry(paths, size, on_error, cache)
    meta = _description(stem.with_suffix(".npy"), stem.with_suffix(".json"))
    if meta is None:
        images, kept = decoded_images(paths, size, on_error=on_error, cache=cache, workers=workers, progress=progress)
        return (lambda: images), kept
    _warn_skipped(meta["skipped"])
    kept, loaded = np.asarray(meta["kept"], dtype=np.int64), []

    def load() -> np.ndarray:
        if not loaded:
            images, again = decoded_images(paths, size, on_error=on_error, cache=cache, workers=workers,
                                           progress=progress)
            if not np.array_equal(again, kept):
                raise OSError(f"image cache {stem.with_suffix('.npy')}: it now keeps {len(again)} of the "
                              f"{len(paths)} images, not the {len(kept)} its description gave before; run again")
            loaded.append(images)
        return loaded[0]
    return load, kept


def _entry(paths, size: int, on_error: str, cache) -> tuple[list[str], object]:
    """The paths as strings and the stem of their cache entry (its folder created)."""
    if on_error not in ON_ERROR:
        raise ValueError(f"unknown on_error {on_error!r}; choose one of {', '.join(ON_ERROR)}")
    paths = [str(p) for p in paths]
    folder = config.cache_dir(cache) / "images"
    folder.mkdir(parents=True, exist_ok=True)
    return paths, folder / f"{cache_key(paths, size)}_{size}px"


def _description(array_file, meta_file) -> dict | None:
    """The entry's description when it is readable and complete and the array has its stored size
    (checked without reading the array), else None."""
    try:
        meta = json.loads(meta_file.read_text())
        ok = (isinstance(meta.get("kept"), list) and isinstance(meta.get("skipped"), list)
              and os.path.getsize(array_file) == meta["array"]["bytes"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return meta if ok else None


def _verified_meta(array_file, meta_file) -> tuple[dict | None, str | None]:
    """(meta, None) when the entry is complete and its array matches the stored checksum, else (meta, why not)."""
    if not meta_file.exists():
        return None, "missing"
    try:
        meta = json.loads(meta_file.read_text())
        expected = meta["array"]
    except (OSError, ValueError, KeyError, TypeError):
        return None, f"its description {meta_file.name} is unreadable or has no checksum"
    return meta, checksum_problem(array_file, expected)


def _decode_all(paths, size, array_file, meta_file, on_error, workers, progress) -> None:
    def load(i):
        try:
            return i, decode_image(paths[i], size), None
        except Exception as exc:  # PIL raises many types for a bad file
            return i, None, f"{paths[i]}: {type(exc).__name__}: {exc}"

    tmp = array_file.with_suffix(f".tmp{os.getpid()}.npy")
    compact_tmp = tmp.with_suffix(".c.npy")
    ok = np.zeros(len(paths), dtype=bool)
    skipped = []
    bar = _progress(len(paths), f"decoding {len(paths)} images at {size}px", progress)
    try:  # on any error, never leave a partial array behind
        out = _new_array(tmp, (len(paths), size, size, 3), array_file)
        with ThreadPoolExecutor(workers or min(8, (os.cpu_count() or 1) + 1)) as pool:
            for i, img, err in pool.map(load, range(len(paths)), chunksize=64):
                bar.update(1)
                if err is not None:
                    if on_error == "raise":
                        raise ImageDecodeError(f"cannot read image {err} (pass on_error='skip' to leave it out)")
                    skipped.append(err)
                    continue
                out[i] = img
                ok[i] = True
        kept = np.flatnonzero(ok)
        if len(kept) < len(paths):
            compact = _new_array(compact_tmp, (len(kept), size, size, 3), array_file)
            compact[:] = out[kept]
            compact.flush()
            del out, compact
            os.replace(compact_tmp, tmp)
        else:
            out.flush()
            del out
        os.replace(tmp, array_file)
    except BaseException:
        tmp.unlink(missing_ok=True)
        compact_tmp.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    # the meta file is written last: its presence says the array is complete
    atomic_write_text(meta_file, json.dumps({"size": size, "kept": kept.tolist(), "skipped": skipped,
                                             "array": file_checksum(array_file)}))


def _new_array(tmp, shape, array_file) -> np.memmap:
    """A uint8 .npy memory map whose blocks are allocated now: on a full disk this raises a clear
    OSError here, instead of the kernel dying of SIGBUS when a page of a sparse file is written."""
    try:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        if hasattr(os, "posix_fallocate"):
            with open(tmp, "r+b") as f:
                os.posix_fallocate(f.fileno(), 0, os.path.getsize(tmp))
        return arr
    except OSError as exc:
        raise write_error(exc, array_file, "the image cache") from exc


def _warn_skipped(skipped):
    if skipped:
        warnings.warn(f"skipped {len(skipped)} unreadable image(s):\n  " + "\n  ".join(skipped), stacklevel=3)


def _progress(total, desc, enabled):
    from tqdm import tqdm  # plain text bars: readable in a papermill log
    return tqdm(total=total, desc=desc, disable=not enabled, mininterval=2.0, ascii=True)
