"""A grid's finished runs packed into an archive and restored (``longtail.archive``): the tiny grid
through the real papermill grid, packed, deleted, restored, and the grid skips every run; the same
runs give the same bytes; a corrupt, tampered or foreign archive is refused before anything is written."""
from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from longtail import archive, rundir
from longtail import grid as G

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "params" / "tiny.yaml"


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """The tiny grid's 4 runs, through the real grid (papermill), in a folder the tests copy."""
    tmp = tmp_path_factory.mktemp("tiny")
    saved = {k: os.environ.get(k) for k in ("LT_CACHE_DIR", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update(LT_CACHE_DIR=str(tmp / "cache"), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    try:
        summary = G.run_grid(TINY, jobs=2, output_root=tmp / "runs")
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    assert summary.ok and len(summary.done) == 4, summary.text()
    return tmp / "runs"


def copy_runs(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".locks"))
    return dst


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path, "r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}


def rewrite(path: Path, members_: dict[str, bytes]) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in members_.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(gzip.compress(raw.getvalue()))


def test_pack_delete_restore_and_the_grid_skips_every_run(tiny_runs, tmp_path, capsys):
    runs = copy_runs(tiny_runs, tmp_path / "runs")
    grid = G.load_grid(TINY, output_root=runs)
    before = {rid: json.loads((runs / rid / rundir.RESULT_FILE).read_text()) for rid in grid.ids}
    packed = archive.pack(grid, tmp_path / "tiny.tar.gz")
    assert (packed.runs, packed.added) == (4, 4)
    names = members(packed.path)
    assert list(names)[0] == archive.MANIFEST
    assert {n.split("/", 1)[1] for n in names if "/" in n} == set(archive.KEPT_FILES)  # no notebook, npz, .pt
    shutil.rmtree(runs)

    assert archive.main(["restore", str(TINY), str(packed.path), "--output-root", str(runs)]) == 0
    assert "4 runs restored" in capsys.readouterr().out
    assert [rundir.status(runs / rid) for rid in grid.ids] == ["done"] * 4
    assert {rid: json.loads((runs / rid / rundir.RESULT_FILE).read_text()) for rid in grid.ids} == before
    summary = G.run_grid(TINY, output_root=runs)
    assert summary.ok and len(summary.skipped) == 4 and not summary.done

    # results read restored runs (the report's tables): every run, its metrics as before
    from longtail import results
    df = results.collect_runs(runs)
    assert sorted(df["run_id"]) == sorted(grid.ids) and not df.attrs["unfinished"]
    assert df["notebook"].isna().all()


def test_the_same_runs_give_the_same_bytes_and_packing_keeps_archived_runs(tiny_runs, tmp_path):
    runs = copy_runs(tiny_runs, tmp_path / "runs")
    grid = G.load_grid(TINY, output_root=runs)
    a = archive.pack(grid, tmp_path / "a.tar.gz")
    os.utime(runs / grid.ids[0] / rundir.PARAMS_FILE, (0, 12345))  # times and order of packing do not matter
    b = archive.pack(grid, tmp_path / "b.tar.gz")
    assert a.path.read_bytes() == b.path.read_bytes()
    # runs gone from disk stay in the archive a later pack writes over it; a new finished run is added
    first = archive.pack(grid.select({"loss": ["ce"]}), tmp_path / "c.tar.gz")
    assert first.runs == 2
    shutil.rmtree(runs / grid.ids[0])
    again = archive.pack(grid, tmp_path / "c.tar.gz")
    assert (again.runs, again.added) == (4, 2) and again.path.read_bytes() == a.path.read_bytes()


def test_restore_never_overwrites_a_folder_that_is_not_empty(tiny_runs, tmp_path):
    runs = copy_runs(tiny_runs, tmp_path / "runs")
    grid = G.load_grid(TINY, output_root=runs)
    packed = archive.pack(grid, tmp_path / "tiny.tar.gz")
    done, failed, partial, empty = (runs / rid for rid in grid.ids)
    metrics_before = (done / rundir.RESULT_FILE).read_bytes()
    (done / rundir.RESULT_FILE).write_text(metrics_before.decode().replace("{", '{"newer": 1, ', 1))
    rundir.mark(failed, rundir.FAILED, error="a newer attempt failed")
    shutil.rmtree(partial)
    partial.mkdir()
    (partial / rundir.PARAMS_FILE).write_text("{}")  # a run that started here
    shutil.rmtree(empty)
    empty.mkdir()
    result = archive.restore(grid, packed.path)
    assert result.restored == [empty.name]
    assert result.kept == {done.name: "done", failed.name: "failed", partial.name: "partial"}
    assert '"newer": 1' in (done / rundir.RESULT_FILE).read_text()
    assert rundir.status(failed) == "failed" and list(partial.iterdir()) == [partial / rundir.PARAMS_FILE]
    assert rundir.status(empty) == "done"
    assert not list(runs.glob(".restoring-*"))


def test_bad_archives_are_refused_with_the_reason_and_nothing_is_written(tiny_runs, tmp_path, capsys):
    runs = copy_runs(tiny_runs, tmp_path / "runs")
    grid = G.load_grid(TINY, output_root=runs)
    good = archive.pack(grid, tmp_path / "tiny.tar.gz").path
    target = tmp_path / "restored"
    cli = ["restore", str(TINY), "", "--output-root", str(target)]

    def refused(path: Path, *expected: str, args=()) -> None:
        cli[2] = str(path)
        assert archive.main(cli + list(args)) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and all(e in err for e in expected), err
        assert not target.exists() or not any(p for p in target.iterdir() if p.name != ".locks")

    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(good.read_bytes()[:2000])
    refused(truncated, str(truncated), "not a readable .tar.gz")
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"not an archive at all")
    refused(garbage, "not a readable .tar.gz")

    content = members(good)
    rid = grid.ids[0]
    changed = tmp_path / "changed.tar.gz"
    rewrite(changed, {**content, f"{rid}/{rundir.RESULT_FILE}": b'{"balanced/acc1": 1.0}'})
    refused(changed, f"{rid}/{rundir.RESULT_FILE}", "SHA-256")
    extra = tmp_path / "extra.tar.gz"
    rewrite(extra, {**content, f"{rid}/last.pt": b"weights"})
    refused(extra, "last.pt", "not in its manifest.json")
    no_manifest = tmp_path / "no_manifest.tar.gz"
    rewrite(no_manifest, {k: v for k, v in content.items() if k != archive.MANIFEST})
    refused(no_manifest, "no manifest.json")

    # another grid: by name, and by --set values that change the runs' ids
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**yaml.safe_load(TINY.read_text()), "name": "other"}))
    cli[1] = str(other)
    refused(good, "holds runs of grid 'tiny'", "not of grid 'other'")
    cli[1] = str(TINY)
    refused(good, "4 of its 4 runs are no run of", "epochs=3", "packed with --set (none)", args=["--set", "epochs=3"])
    # a run folder whose params.json does not hash to its name (a renamed run)
    manifest = json.loads(content[archive.MANIFEST])
    a, b = grid.ids[:2]
    swapped = {k.replace(a, "@").replace(b, a).replace("@", b): v for k, v in content.items() if k != archive.MANIFEST}
    manifest["runs"][a], manifest["runs"][b] = manifest["runs"][b], manifest["runs"][a]
    renamed = tmp_path / "renamed.tar.gz"
    rewrite(renamed, {archive.MANIFEST: json.dumps(manifest).encode(), **swapped})
    refused(renamed, "hashes to", "not to its folder's name")
    # pack refuses to write over a foreign or broken archive
    cli[0], cli[2] = "pack", str(garbage)
    assert archive.main(cli) == 2 and "not a readable" in capsys.readouterr().err
    assert garbage.read_bytes() == b"not an archive at all"


def test_command_line_pack_and_restore(tiny_runs, tmp_path):
    """The commands ``bench/gpu.sh`` calls, as processes: pack, restore into a bare folder, the grid's
    dry run lists every run done."""
    out = tmp_path / "archive" / "tiny.tar.gz"
    py = [sys.executable, "-m", "longtail.archive"]
    proc = subprocess.run(py + ["pack", str(TINY), str(out), "--output-root", str(tiny_runs)], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "4 runs of grid tiny (4 added now)" in proc.stdout, proc.stderr
    bare = tmp_path / "bare"
    proc = subprocess.run(py + ["restore", str(TINY), str(out), "--output-root", str(bare)], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "4 runs restored" in proc.stdout, proc.stderr
    proc = subprocess.run([sys.executable, "-m", "longtail.grid", str(TINY), "--dry-run", "--output-root", str(bare)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.stdout.rstrip().endswith("4 runs: 4 done, 0 failed, 0 partial, 0 todo"), proc.stdout


@pytest.mark.slow
def test_the_report_renders_the_appendix_tables_from_restored_runs(tiny_runs, tmp_path):
    """Restored runs have no predictions.npz: the report still renders, its tables from every run and
    the prediction-based figures from none, saying so."""
    grid = G.load_grid(TINY, output_root=tiny_runs)
    packed = archive.pack(grid, tmp_path / "tiny.tar.gz")
    restored = tmp_path / "restored"
    archive.restore(G.load_grid(TINY, output_root=restored), packed.path)
    out = tmp_path / "report"
    rep = subprocess.run([sys.executable, "-m", "longtail.report", str(restored), "--out", str(out), "--no-explore",
                          "--no-run-pages"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rep.returncode == 0, rep.stdout + rep.stderr
    html = (out / "index.html").read_text()
    for text in ("Table A.17: Top-1 accuracy", "Table A.20", "4 runs without predictions (restored from an archive)"):
        assert text in html, text
    assert (out / "tables" / "top1_resnet32_longtailed.csv").exists()
    assert not (out / "figures" / "per_class_resnet32_longtailed.png").exists()
