"""A grid's finished runs as one small, reproducible archive, and back: for a grid that takes more
than one lease of a machine that starts bare each time (``bench/gpu.sh``)::

    python -m longtail.archive pack    params/thesis.yaml bench/archive/thesis.tar.gz --set pretrained=inat_insects
    python -m longtail.archive restore params/thesis.yaml bench/archive/thesis.tar.gz --set pretrained=inat_insects

``pack`` writes every finished run (``rundir.status`` done) of the grid into the archive, keeping
the runs an existing archive at that path already holds: packing never loses a run.  Each run keeps
only its record (``KEPT_FILES``: parameters, classes, history, metrics, environment, status), a few
kilobytes; its checkpoints, its predictions (``predictions.npz``: about 600 kB a run on EU Moths,
incompressible logits, 100 MB for the thesis grid's 168 runs) and its executed notebook (about
50 kB compressed a run) stay behind.  The same runs give the same bytes: members sorted, times,
owners and modes fixed, and a gzip header without a time or a name.

``restore`` checks the archive first (a readable gzip'd tar; its manifest names this grid; each run
is a run of this grid with these ``--set`` values: its id is among the grid's and is the hash of
its ``params.json``; each file has the manifest's SHA-256) and refuses it whole, with the reason,
before writing anything.  It then writes each run whose folder is missing or empty (``todo``),
atomically (a folder appears complete or not at all), and leaves every other folder as it is: a
finished run is never overwritten, nor one that is running or failed.  Restored runs are ``done``:
the grid skips them and ``longtail.results`` (the report, ``bench/gpu_summary.py``) reads them,
except what needs the predictions (per-class figures).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from . import rundir
from .config import PROJECT_ROOT
from .executors import run_lock
from .fileio import atomic_write_bytes
from .grid import parse_sets
from .gridspec import GridError, load_grid

#: what an archived run keeps: its record, without checkpoints, predictions or the executed notebook
KEPT_FILES = (rundir.PARAMS_FILE, rundir.CLASSES_FILE, rundir.HISTORY_FILE, rundir.ENVIRONMENT_FILE,
              rundir.METRICS_CSV, rundir.RESULT_FILE, rundir.STATUS_FILE)
#: the archive's table of contents, its first member
MANIFEST = "manifest.json"
#: the manifest's format; a reader refuses another
FORMAT = 1
_RUN_ID = re.compile(r"[0-9a-f]{12}")


class ArchiveError(ValueError):
    """An archive that cannot be packed or restored; the message names the archive and the reason."""


@dataclass
class Contents:
    """An archive read into memory: its manifest and ``{run id: {file name: bytes}}``."""

    manifest: dict
    runs: dict[str, dict[str, bytes]] = field(default_factory=dict)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _run_files(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in KEPT_FILES if (folder / name).is_file()}


def read(path: str | os.PathLike) -> Contents:
    """The archive at ``path``, checked against its manifest; ArchiveError when it is unreadable,
    holds members the manifest does not list (or lacks listed ones), or a file's SHA-256 differs."""
    path = Path(path)
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = {}
            for m in tar:
                if not m.isfile():
                    raise ArchiveError(f"{path}: member {m.name!r} is not a plain file")
                members[m.name] = tar.extractfile(m).read()
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ArchiveError(f"{path}: not a readable .tar.gz archive ({type(exc).__name__}: {exc})") from None
    try:
        manifest = json.loads(members.pop(MANIFEST))
    except KeyError:
        raise ArchiveError(f"{path}: no {MANIFEST}; not an archive written by longtail.archive") from None
    except ValueError as exc:
        raise ArchiveError(f"{path}: {MANIFEST} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("runs"), dict):
        raise ArchiveError(f"{path}: {MANIFEST} is not of format {FORMAT} (a 'grid' name and a 'runs' table)")
    contents = Contents(manifest)
    listed = {f"{rid}/{name}": digest for rid, files in manifest["runs"].items() for name, digest in files.items()}
    for name in sorted(set(members) | set(listed)):
        if name not in listed:
            raise ArchiveError(f"{path}: member {name!r} is not in its {MANIFEST}")
        if name not in members:
            raise ArchiveError(f"{path}: {name} is listed in its {MANIFEST} but missing")
        rid, _, file = name.partition("/")
        if not _RUN_ID.fullmatch(rid) or file not in KEPT_FILES:
            raise ArchiveError(f"{path}: member {name!r} is no run file (<12 hex digits>/<one of "
                               f"{', '.join(KEPT_FILES)}>)")
        if _sha256(members[name]) != listed[name]:
            raise ArchiveError(f"{path}: {name} does not have the SHA-256 its {MANIFEST} records (corrupted)")
        contents.runs.setdefault(rid, {})[file] = members[name]
    return contents


def _check_grid(contents: Contents, grid, path: Path, sets: dict) -> None:
    """ArchiveError unless every run of the archive is a run of ``grid`` (name, id, params hash)."""
    name = contents.manifest.get("grid")
    if name != grid.name:
        raise ArchiveError(f"{path}: holds runs of grid {name!r} (packed from {contents.manifest.get('grid_file')}), "
                           f"not of grid {grid.name!r} ({grid.path}); nothing was restored")
    foreign = sorted(set(contents.runs) - set(grid.ids))
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" (+{len(foreign) - 5} more)" if len(foreign) > 5 else "")
        raise ArchiveError(f"{path}: {len(foreign)} of its {len(contents.runs)} runs are no run of {grid.path} with "
                           f"--set {_sets_text(sets)}: {shown}; it was packed with --set "
                           f"{_sets_text(contents.manifest.get('sets') or {})}; nothing was restored")
    for rid, files in sorted(contents.runs.items()):
        missing = [f for f in (rundir.PARAMS_FILE, rundir.RESULT_FILE, rundir.STATUS_FILE) if f not in files]
        if missing:
            raise ArchiveError(f"{path}: run {rid} lacks {', '.join(missing)}; nothing was restored")
        try:
            got = rundir.run_id(json.loads(files[rundir.PARAMS_FILE]))
        except ValueError as exc:
            raise ArchiveError(f"{path}: run {rid}: {rundir.PARAMS_FILE} is not valid JSON ({exc})") from None
        if got != rid:
            raise ArchiveError(f"{path}: run {rid}: its {rundir.PARAMS_FILE} hashes to {got}, not to its folder's "
                               "name; nothing was restored")


def _sets_text(sets: dict) -> str:
    return " ".join(f"{k}={json.dumps(v)}" for k, v in sorted(sets.items())) or "(none)"


def _tar_bytes(manifest: dict, runs: dict[str, dict[str, bytes]]) -> bytes:
    """The gzip'd tar of the manifest and the runs, byte for byte the same for the same inputs."""
    def member(tar, name, data):
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = len(data), 0, 0o644, 0, 0, "", ""
        tar.addfile(info, io.BytesIO(data))

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        member(tar, MANIFEST, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())
        for rid in sorted(runs):
            for name in sorted(runs[rid]):
                member(tar, f"{rid}/{name}", runs[rid][name])
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


@dataclass
class PackResult:
    path: Path
    runs: int  # runs in the archive now
    added: int  # of them, finished runs on disk that the archive did not hold before
    size: int  # bytes


def pack(grid, path: str | os.PathLike, sets: dict | None = None) -> PackResult:
    """Write the finished runs of ``grid`` (a ``gridspec.Grid``), plus the runs an archive already at
    ``path`` holds, into ``path``.  A run in both keeps the archive's copy.  ArchiveError, before
    writing, when the existing archive is unreadable or of another grid."""
    path = Path(path)
    old = read(path) if path.exists() else Contents({"runs": {}})
    if path.exists():
        _check_grid(old, grid, path, sets or {})
    runs = dict(old.runs)
    added = 0
    for run in grid.runs:
        folder = Path(run["output_dir"])
        if folder.name not in runs and rundir.is_done(folder):
            runs[folder.name] = _run_files(folder)
            added += 1
    manifest = {"format": FORMAT, "grid": grid.name, "grid_file": _project_relative(grid.path),
                "sets": sets or {}, "kept_files": list(KEPT_FILES),
                "runs": {rid: {n: _sha256(d) for n, d in sorted(files.items())} for rid, files in sorted(runs.items())}}
    data = _tar_bytes(manifest, runs)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    return PackResult(path, len(runs), added, len(data))


def _project_relative(p) -> str | None:
    if p is None:
        return None
    p = Path(p).resolve()
    return str(p.relative_to(PROJECT_ROOT)) if p.is_relative_to(PROJECT_ROOT) else str(p)


@dataclass
class RestoreResult:
    restored: list[str]
    kept: dict[str, str]  # run id -> the status of the folder left as it was


def restore(grid, path: str | os.PathLike, sets: dict | None = None) -> RestoreResult:
    """Write the archive's runs into the grid's run folders that are missing or empty; every other
    folder is left as it is.  The archive is checked whole first (``read``, and every run is a run of
    ``grid``): ArchiveError, with nothing written, when it is not."""
    path = Path(path)
    contents = read(path)
    _check_grid(contents, grid, path, sets or {})
    restored, kept = [], {}
    grid.output_root.mkdir(parents=True, exist_ok=True)
    for rid, files in sorted(contents.runs.items()):
        target = grid.output_root / rid
        with run_lock(target) as mine:
            state = rundir.status(target) if mine else "busy"
            if state != rundir.TODO:
                kept[rid] = state
                continue
            staging = grid.output_root / f".restoring-{rid}"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            for name, data in files.items():
                atomic_write_bytes(staging / name, data)
            if target.exists():
                target.rmdir()  # empty: status todo
            staging.rename(target)
            restored.append(rid)
    return RestoreResult(restored, kept)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m longtail.archive", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=("pack", "restore"))
    ap.add_argument("params", help="the grid's parameter file, e.g. params/thesis.yaml")
    ap.add_argument("archive", help="the archive (.tar.gz), e.g. bench/archive/thesis.tar.gz")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="sets",
                    help="the grid's --set values (they change the runs' ids), as given to longtail.grid")
    ap.add_argument("--output-root", default=None, help="folder of the run folders (default: from the file)")
    args = ap.parse_args(argv)
    try:
        sets = parse_sets(args.sets)
        grid = load_grid(args.params, output_root=args.output_root, sets=sets, check_backbone=False)
        if args.action == "pack":
            r = pack(grid, args.archive, sets)
            print(f"archive {r.path}: {r.runs} runs of grid {grid.name} ({r.added} added now), {r.size / 1024:.0f} KiB")
        else:
            r = restore(grid, args.archive, sets)
            kept = ", ".join(f"{n} {s}" for s in sorted(set(r.kept.values()))
                             for n in [sum(v == s for v in r.kept.values())])
            print(f"archive {args.archive}: {len(r.restored)} runs restored into {grid.output_root}"
                  + (f"; left as they were: {kept}" if kept else ""))
    except (ArchiveError, GridError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
