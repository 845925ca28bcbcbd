"""The analysis tables on hand-made runs (exact strings), and the rendered report end to end: a tiny
grid through ``python -m longtail.grid``, ``python -m longtail.report``, and the page opened in
headless Chromium (no console error; a screenshot is kept)."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from longtail import config, report, results, tables

SPLITS = ("balanced", "longtailed", "head", "middle", "tail")


# ------------------------------------------------------------------------------- hand-made runs

def make_run(root: Path, rid: str, *, done: bool = True, acc: dict | None = None, **params) -> Path:
    """A run folder with params.json and (when done) metrics.json; acc: split -> top-1."""
    p = {"dataset": "eu_moths", "backbone": "mobilenetv2", "train_set": "longtailed", "imbalance_factor": 8.0,
         "loss": "ce", "loss_params": {}, "drw_epoch": None, "sampler": "instance", "posthoc": "none",
         "seed": 0, "subset_seed": 0, "epochs": 30, "lr": 0.1, **params}
    d = root / rid
    d.mkdir(parents=True)
    (d / "params.json").write_text(json.dumps({**p, "output_dir": str(d)}))
    if done:
        acc = acc or {}
        m = {k: p[k] for k in ("dataset", "backbone", "train_set", "imbalance_factor", "loss", "seed", "drw_epoch")}
        m["loss_params"] = json.dumps(p["loss_params"], sort_keys=True)
        for s in SPLITS:
            m.update({f"{s}/acc1": acc.get(s, 0.5), f"{s}/macro_f1": acc.get(s, 0.5) - 0.1,
                      f"{s}/loss": 1.0 + acc.get(s, 0.5), f"{s}/n": 10})
        (d / "metrics.json").write_text(json.dumps(m))
    return d


def test_format_mean_std_exact():
    assert results.format_mean_std([0.831, 0.835, 0.827]) == "83.1 ± 0.4"  # std (ddof 1) of .827 .831 .835 = .004
    assert results.format_mean_std([0.8314]) == "83.1"
    assert results.format_mean_std([1.2345, 1.2345], scale=1, decimals=2) == "1.23 ± 0.00"
    assert results.format_mean_std([0.5, float("nan")]) == "50.0"
    assert results.format_mean_std([]) == "–"


def test_collect_runs_and_method_labels(tmp_path):
    root = tmp_path / "grid"
    make_run(root, "a", loss="ce")
    make_run(root, "b", loss="focal", loss_params={"gamma": 1.0})
    make_run(root, "c", loss="focal", loss_params={"gamma": 2.0})
    make_run(root, "d", loss="ldam", drw_epoch=20, loss_params={"max_m": 0.5, "s": 30})
    make_run(root, "e", loss="class_balanced", loss_params={"base": "focal", "beta": 0.9999})
    make_run(root, "f", loss="ce", sampler="class_balanced", seed=1)
    make_run(root, "g", loss="ce", done=False)
    runs = results.collect_runs([root])
    assert len(runs) == 6 and runs.attrs["unfinished"] == [str(root / "g")]
    assert list(runs["run_id"]) == ["a", "b", "c", "d", "e", "f"]
    assert set(runs["grid"]) == {"grid"}
    assert dict(zip(runs["run_id"], runs["method"])) == {
        "a": "CE", "b": "Focal (gamma=1)", "c": "Focal (gamma=2)", "d": "LDAM-DRW",
        "e": "Class-balanced focal", "f": "CE + class-balanced sampling"}
    assert runs.loc[runs["run_id"] == "b", "loss_params"].item() == '{"gamma": 1.0}'
    assert runs["tail/acc1"].dtype == float and runs["notebook"].isna().all()
    # one run folder, and a folder of runs, are sources too
    assert len(results.collect_runs(root / "a")) == 1



def test_each_method_gains_against_the_baseline_of_its_own_context(tmp_path):
    """Two grids ran CE in two contexts (validation split vs unused images): labels say so, and the
    tail trade-off compares each method with the CE of its own context, never with no baseline or
    the other one (the techniques grid beside the default grid)."""
    root = tmp_path / "g"
    make_run(root, "ce_split", val_source="split", acc={"tail": 0.40, "head": 0.90, "balanced": 0.70})
    make_run(root, "ce_unused", val_source="unused", acc={"tail": 0.30, "head": 0.80, "balanced": 0.60})
    make_run(root, "bs_unused", val_source="unused", loss="balanced_softmax",
             acc={"tail": 0.50, "head": 0.75, "balanced": 0.65})
    runs = results.collect_runs(root)
    assert set(runs["method"]) == {"CE (val_source=split)", "CE (val_source=unused)", "Balanced softmax"}
    tradeoff = tables.tail_tradeoff(runs).set_index("Loss")
    assert tradeoff.loc["Balanced softmax", "Baseline"] == "CE (val_source=unused)"
    assert tradeoff.loc["Balanced softmax", "Δ tail (pp)"] == 20.0  # 50 - 30, not 50 - 40
    assert tradeoff.loc["Balanced softmax", "Δ head (pp)"] == -5.0
    assert "Balanced softmax helps the tail most, +20.0 points of tail top-1 over CE (val_source=unused)" in \
        tables.tail_summary(tables.tail_tradeoff(runs))

def test_appendix_tables_mean_std_exact(tmp_path):
    root = tmp_path / "g"
    for seed, (bal, tail) in enumerate([(0.80, 0.40), (0.82, 0.44)]):
        make_run(root, f"ce{seed}", seed=seed, acc={"balanced": bal, "tail": tail, "head": 0.9})
        make_run(root, f"bs{seed}", seed=seed, loss="balanced_softmax",
                 acc={"balanced": bal + 0.03, "tail": tail + 0.2, "head": 0.85})
    make_run(root, "ceb", train_set="balanced", acc={"balanced": 0.9})
    runs = results.collect_runs(root)
    appendix = tables.appendix_tables(runs)
    assert [t.name for t in appendix] == ["top1_mobilenetv2_balanced", "splits_mobilenetv2_balanced",
                                        "top1_mobilenetv2_longtailed", "splits_mobilenetv2_longtailed"]
    assert appendix[0].caption.startswith("Table A.1: Top-1 accuracy (%)") and "one seed" in appendix[0].caption
    assert appendix[2].caption.startswith("Table A.3:") and "over 2 seeds" in appendix[2].caption
    top1 = appendix[2].frame
    assert list(top1.columns) == ["Balanced", "Long-tailed", "Head", "Middle", "Tail", "Seeds"]
    assert list(top1.index) == ["CE", "Balanced softmax"]
    assert top1.loc["CE", "Balanced"] == "81.0 ± 1.4"  # mean .81, std .01414
    assert top1.loc["CE", "Tail"] == "42.0 ± 2.8"
    assert top1.loc["Balanced softmax", "Tail"] == "62.0 ± 2.8"
    assert top1.loc["CE", "Head"] == "90.0 ± 0.0"
    assert top1.loc["CE", "Seeds"] == 2
    assert appendix[0].frame.loc["CE", "Balanced"] == "90.0"
    splits = appendix[3].frame
    assert splits.loc["CE", ("Balanced", "Loss")] == "1.81 ± 0.01"
    assert splits.loc["CE", ("Tail", "F1")] == "32.0 ± 2.8"
    assert splits.loc["Balanced softmax", ("Tail", "Acc1")] == "62.0 ± 2.8"

    tradeoff = tables.tail_tradeoff(runs)
    assert list(tradeoff["Loss"]) == ["Balanced softmax", "CE"]
    assert tradeoff.loc[0, "Δ tail (pp)"] == 20.0 and tradeoff.loc[0, "Δ head (pp)"] == -5.0
    assert tables.tail_summary(tradeoff) == (
        "eu_moths, mobilenetv2, long-tailed training set: Balanced softmax helps the tail most, +20.0 points of "
        "tail top-1 over CE (62.0 % vs 42.0 %), at a cost of 5.0 points on the head (85.0 % vs 90.0 %); "
        "balanced test top-1 +3.0 points.")

    files = report.save_table(appendix[2], tmp_path / "out")
    tex = files[0].read_text()
    assert r"\label{tab:top1_mobilenetv2_longtailed}" in tex and r"81.0 $\pm$ 1.4" in tex
    assert r"\caption{Top-1 accuracy (\%) per test split" in tex and "Method & Balanced" in tex
    assert pd.read_csv(files[1], index_col=0).loc["CE", "Balanced"] == "81.0 ± 1.4"
    assert tables.published_comparison(runs).empty  # no CIFAR-10 / ResNet-32 run


def test_published_comparison_matches_the_protocol(tmp_path):
    base = dict(dataset="cifar10", backbone="resnet32", imbalance_factor=100.0)
    make_run(tmp_path, "ce", **base, acc={"balanced": 0.70})
    make_run(tmp_path, "ldam", **base, loss="ldam", drw_epoch=160, acc={"balanced": 0.77})
    make_run(tmp_path, "ldam_nodrw", **base, loss="ldam", acc={"balanced": 0.10})  # not LDAM-DRW
    make_run(tmp_path, "bal", **base, train_set="balanced", acc={"balanced": 0.10})  # not long-tailed
    table = tables.published_comparison(results.collect_runs(tmp_path)).set_index(["Imbalance factor", "Method"])
    assert table.loc[(100, "CE"), "Published top-1 (%)"] == "70.36"  # Cao et al. 2019: error 29.64
    assert table.loc[(100, "CE"), "Ours top-1 (%)"] == "70.00"
    assert table.loc[(100, "LDAM-DRW"), "Ours − published"] == "-0.03"
    assert table.loc[(100, "LDAM-DRW"), "Seeds"] == 1
    assert table.loc[(10, "CE"), "Ours top-1 (%)"] == "–"
    assert table["Source"].str.startswith("Cao et al. 2019").all()


# ------------------------------------------------------------------------------- the rendered report

def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """The tiny grid (2 losses x 2 training sets, synthetic data) run and reported, once."""
    tmp = tmp_path_factory.mktemp("report")
    env = {**os.environ, "LT_RUNS_DIR": str(tmp / "runs"), "LT_CACHE_DIR": str(tmp / "cache"),
           "PYTHONUNBUFFERED": "1"}
    py = [sys.executable, "-m"]
    grid = subprocess.run(py + ["longtail.grid", "params/tiny.yaml", "--jobs", "2"], cwd=config.PROJECT_ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert grid.returncode == 0, grid.stdout + grid.stderr
    out = tmp / "report"
    # -X importtime: every module the report process imports, on its stderr (kernels are other processes)
    rep = subprocess.run([sys.executable, "-X", "importtime", "-m", "longtail.report", "params/tiny.yaml", "--out",
                          str(out)], cwd=config.PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert rep.returncode == 0, rep.stdout + rep.stderr
    (tmp / "report-imports.txt").write_text(rep.stderr)
    assert "report: 4 finished runs" in rep.stdout, grid.stdout + rep.stdout + rep.stderr
    return out, rep.stdout


@pytest.mark.slow
def test_building_the_report_imports_no_torch(rendered):
    """Reading finished runs needs only their folders' JSON and CSV files: the report process
    (``python -m longtail.report``) never imports torch; its notebooks' kernels may."""
    imports = (rendered[0].parent / "report-imports.txt").read_text()
    modules = re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", imports, re.M)
    assert "longtail.results" in modules and "longtail.gridspec" in modules  # the log is the report's imports
    assert not [m for m in modules if m.split(".")[0] in ("torch", "torchvision", "timm")]


def test_display_names_follow_their_owners_order():
    from longtail import losses, lossinfo, metrics, params
    assert list(lossinfo.loss_labels()) == list(losses.LOSS_NAMES)  # also the tables' row order (method_order)
    assert list(results.SPLIT_LABELS) == list(metrics.SPLITS) and list(results.TRAIN_SET_LABELS) == list(params.TRAIN_SETS)
    assert results.method_order(["LDAM-DRW", "Focal", "CE", "Class-balanced focal"]) == [
        "CE", "Focal", "Class-balanced focal", "LDAM-DRW"]


@pytest.mark.slow
def test_report_files_tables_and_figures(rendered):
    out, log = rendered
    assert "report:" in log and (out / "index.html").exists()
    html = (out / "index.html").read_text()
    for name in ("top1_resnet32_balanced", "top1_resnet32_longtailed", "splits_resnet32_longtailed",
                 "tail_tradeoff", "sets_synthetic", "classes_synthetic"):
        assert (out / "tables" / f"{name}.tex").stat().st_size > 0 and (out / "tables" / f"{name}.csv").exists()
    for name in ("class_distribution_synthetic", "test_counts_synthetic", "samples_synthetic",
                 "image_sizes_synthetic", "groups_resnet32", "balanced_vs_longtailed_resnet32",
                 "per_class_resnet32_longtailed", "confusion", "reliability"):
        for ext in ("pdf", "png"):
            assert (out / "figures" / f"{name}.{ext}").stat().st_size > 1000, f"{name}.{ext}"
    assert len(pd.read_csv(out / "tables" / "runs.csv")) == 4
    # the page: provenance, the tables' headers, figures inline, the run links, no code
    for text in ("Git commit", "Parameter files", "params/tiny.yaml", "Packages", "Report wall time",
                 "Table A.17: Top-1 accuracy", "Table A.20", ">Long-tailed<", ">Middle<", ">Tail<", ">Acc1<",
                 "What helps the tail", "Reliability", "held in memory"):
        assert text in html, text
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', html)) >= 9  # 4 data-set and 5 result figures
    assert "import matplotlib" not in html and "results.collect_runs" not in html  # code hidden
    assert "Traceback" not in html and "An Exception was encountered" not in html
    assert 'data-mime-type="application/vnd.jupyter.stderr"' not in html  # no warning printed by a cell
    # self-contained: no script, style or image from the network
    assert not re.search(r'<(script|link|img)[^>]+(src|href)="https?://', html)
    links = re.findall(r'href="(runs/[^"]+)"', html)
    assert len(links) == 4
    for link in links:
        page = out / link
        assert page.exists() and "run_training" in page.read_text()  # the run's notebook, code shown
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["runs"]["finished"] == 4 and "explore.py" in prov["report_timings_s"]
    # each figure's three renders (shown PNG, PDF, PNG file), timed where they ran, for bench/main_job.py's floor
    renders = prov["figure_render_s"]
    assert {"class_distribution_synthetic", "confusion", "reliability"} <= set(renders)
    assert all(len(r) == 3 and min(r) > 0 for r in renders.values())
    assert not (out / report.RENDER_TIMES).exists()  # gathered, then removed


@pytest.mark.slow
def test_report_links_its_files_and_run_pages_lead_with_the_run(rendered):
    """Every table links its LaTeX and CSV, every figure its PDF and PNG, the header the provenance
    file; every link resolves; images carry alternative text; a run page starts with a link back,
    the metrics in % and the effective parameters (not the notebook's defaults)."""
    out, _ = rendered
    html = (out / "index.html").read_text()
    hrefs = set(re.findall(r'href="([^"#]+)(?:#[^"]*)?"', html))
    for name in ("top1_resnet32_longtailed", "tail_tradeoff", "sets_synthetic"):
        assert {f"tables/{name}.tex", f"tables/{name}.csv"} <= hrefs, name
    for name in ("class_distribution_synthetic", "confusion", "reliability", "per_class_resnet32_longtailed"):
        assert {f"figures/{name}.pdf", f"figures/{name}.png"} <= hrefs, name
    assert {"provenance.json", "tables/runs.csv", "analysis.ipynb"} <= hrefs
    missing = [h for h in hrefs if not h.startswith(("http:", "https:")) and not (out / h).exists()]
    assert not missing, missing
    alts = re.findall(r'<img [^>]*alt="([^"]*)"', html)
    assert len(alts) == len(re.findall(r"<img ", html)) >= 9
    assert not [a for a in alts if a in ("", "figure") or "No description" in a], alts
    assert any("top-1 accuracy (%)" in a for a in alts)
    if not (config.PROJECT_ROOT / "bench" / "results").is_dir():
        assert "No benchmark results yet" in html and "make bench" in html
    page_link = re.findall(r'href="(runs/[^"]+)"', html)[0]
    page = (out / page_link).read_text()
    back = re.search(r'<a href="([^"]+)">← back to the report</a>', page).group(1)
    assert (out / page_link).parent.joinpath(back.split("#")[0]).resolve() == (out / "index.html").resolve()
    assert page.index("back to the report") < page.index("Test metrics") < page.index("Parameters") < page.index(
        "run_training")
    assert "top-1 (%)" in page and "<code>dataset</code></th><td>synthetic</td>" in page
    assert "dataset = " not in page  # neither the notebook's defaults nor papermill's injected copy
    assert "IProgress" not in page and "No description" not in page


@pytest.mark.slow
def test_wide_tables_scroll_with_their_captions_in_view_at_1024_px(rendered, tmp_path):
    """In Chromium at 1,024 px: no table or caption is clipped by a box that hides its overflow,
    a wide table scrolls inside its output, its caption's text stays in the visible width, and
    the page itself does not scroll sideways."""
    browser = _chromium()
    if browser is None:
        pytest.skip("headless Chromium not installed (Debian: apt-get install chromium; .ci/run installs it)")
    out, _ = rendered
    result = _layout_check(browser, out / "index.html", tmp_path, width=1024)
    assert result["checked"] >= 10
    assert result["pageOverflow"] <= 0 and result["clipped"] == [], result


_LAYOUT_PAGE = """<!doctype html><html><body style="margin:0">
<iframe id="f" src="REPORT" style="width:WIDTHpx;height:900px;border:0"></iframe><pre id="out">pending</pre>
<script>
document.getElementById("f").onload = function () {
  const d = this.contentDocument, w = this.contentWindow;
  const res = {pageOverflow: d.documentElement.scrollWidth - d.documentElement.clientWidth, checked: 0,
               scrolling: 0, clipped: []};
  for (const el of d.querySelectorAll("table, caption")) {
    res.checked++;
    let right = el.getBoundingClientRect().right;
    if (el.tagName === "CAPTION") { const r = d.createRange(); r.selectNodeContents(el); right = r.getBoundingClientRect().right; }
    for (let a = el.parentElement; a && a !== d.body; a = a.parentElement) {
      const ox = w.getComputedStyle(a).overflowX;
      const beyond = right > a.getBoundingClientRect().right + 1;
      if (ox === "auto" || ox === "scroll") {
        if (beyond && el.tagName === "CAPTION") res.clipped.push("caption text beyond the visible width: " + el.textContent.trim().slice(0, 50));
        else if (beyond) res.scrolling++;
        break;
      }
      if ((ox === "hidden" || ox === "clip") && beyond) { res.clipped.push(el.tagName + " clipped: " + el.textContent.trim().slice(0, 50)); break; }
    }
  }
  document.getElementById("out").textContent = "LAYOUT " + JSON.stringify(res);
};
</script></body></html>"""


def _layout_check(browser: str, page: Path, tmp_path: Path, width: int) -> dict:
    """Measure the page's tables in an iframe of ``width`` px (a same-folder file page; Chromium
    lets it read the frame with --allow-file-access-from-files) and return what the script found."""
    probe = tmp_path / "layout.html"
    probe.write_text(_LAYOUT_PAGE.replace("REPORT", page.as_uri()).replace("WIDTH", str(width)))
    dom = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile-layout'}",
                          "--allow-file-access-from-files", f"--window-size={width + 60},1000",
                          "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    found = re.search(r"LAYOUT (\{.*?\})</pre>", dom)
    assert found, dom[-2000:]
    return json.loads(found.group(1))


@pytest.mark.slow
def test_report_opens_in_chromium_without_errors(rendered, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("headless Chromium not installed (Debian: apt-get install chromium; .ci/run installs it)")
    out, _ = rendered
    url = (out / "index.html").as_uri()
    shot = tmp_path / "report.png"
    run = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr",
                          "--v=0", f"--screenshot={shot}", "--window-size=1280,2000", url],
                         capture_output=True, text=True, timeout=120)
    console = [line for line in run.stderr.splitlines() if "CONSOLE" in line]
    assert not console, "the page logged to the console:\n" + "\n".join(console)
    assert shot.exists() and shot.stat().st_size > 20_000, run.stderr[-2000:]
    shutil.copy(shot, out / "screenshot.png")
    dom = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile2'}", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120).stdout
    assert "Table A.17: Top-1 accuracy" in dom and dom.count("<img") >= 9
    from PIL import Image
    with Image.open(shot) as im:
        assert im.size == (1280, 2000)
        assert np.asarray(im.convert("L")).std() > 10  # not a blank page


def test_benchmark_tables_are_read_in_name_order(tmp_path):
    (tmp_path / "b.md").write_text("| x |\n|---|\n| 2 |\n")
    (tmp_path / "a.md").write_text("ratio: 0.97\n")
    (tmp_path / "notes.txt").write_text("ignored")
    assert report.benchmark_tables(tmp_path) == [("a.md", "ratio: 0.97\n"), ("b.md", "| x |\n|---|\n| 2 |\n")]
    assert report.benchmark_tables(tmp_path / "missing") == []


def test_appendix_tables_follow_the_grid_order_and_the_thesis_numbering(tmp_path):
    """Backbones in the order the runs come (the grid's), not alphabetical; each numbered by its place
    in the thesis (ViT-B/16 A.9–A.12, ConvNeXt-Base A.13–A.16, whichever backbones ran), another
    backbone after them; a missing training set keeping its numbers; the caption names the protocol;
    coinciding rows noted."""
    root = tmp_path / "g"
    make_run(root, "a1", backbone="vit_b16", train_set="longtailed")
    make_run(root, "b1", backbone="convnext_base", train_set="balanced", acc={"balanced": 0.7})
    make_run(root, "b2", backbone="convnext_base", train_set="balanced", loss="weighted_ce", acc={"balanced": 0.7})
    make_run(root, "b3", backbone="convnext_base", train_set="balanced", loss="focal", acc={"balanced": 0.6})
    make_run(root, "c1", backbone="resnet32", train_set="longtailed")
    runs = results.collect_runs(root)
    appendix = tables.appendix_tables(runs)
    assert [(t.name, t.caption.split(":")[0]) for t in appendix] == [
        ("top1_vit_b16_longtailed", "Table A.11"), ("splits_vit_b16_longtailed", "Table A.12"),
        ("top1_convnext_base_balanced", "Table A.13"), ("splits_convnext_base_balanced", "Table A.14"),
        ("top1_resnet32_longtailed", "Table A.19"), ("splits_resnet32_longtailed", "Table A.20")]
    assert "evaluation protocol 'weighted'" in appendix[0].caption and "macro F1" in appendix[1].caption
    assert appendix[0].caption.endswith("; test images: balanced 10 (head 10, middle 10, tail 10); long-tailed = the "
                                      "balanced set weighted by the training prior.")
    ft = make_run(root, "ft", backbone="resnet50v2", mode="finetune", optimizer="adamw", lr=1e-3,
                  backbone_lr_scale=0.1, head_init="linear_probe")
    caption = {t.name: t.caption for t in tables.appendix_tables(results.collect_runs(root))}["top1_resnet50v2_longtailed"]
    assert caption.startswith("Table A.7") and ("; fine-tuned (finetune): 30 epochs, adamw lr 0.001, backbone lr x 0.1, "
                                                "classifier from a linear probe (LP-FT); test images") in caption, caption
    assert ft.exists()
    assert list(appendix[2].frame.index) == ["CE", "Focal", "Weighted CE"]  # the thesis's row order
    assert appendix[2].notes == ["The rows CE, Weighted CE coincide in every digit."]
    assert appendix[0].notes == []


def _bars(values, title=""):
    """A small figure that counts how often it is built."""
    import matplotlib.pyplot as plt
    _bars.calls += 1
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.bar(range(len(values)), values)
    ax.set_title(title)
    return fig


_bars.calls = 0


def test_a_figure_is_built_and_rendered_once_for_the_same_inputs(tmp_path, tmp_cache):
    """``show_figure_of``: a second report with the same inputs copies the cached renders (before:
    every report built and rendered every figure, 1 s each, 5 s the confusion matrices); other inputs
    build again; a damaged cache entry is named in a warning and rendered again."""
    import matplotlib
    matplotlib.use("Agg")
    first, again, other, healed = (tmp_path / n for n in ("first", "again", "other", "healed"))
    report.show_figure_of(_bars, [1, 2, 3], title="t", out_dir=first, name="bars")
    report.show_figure_of(_bars, [1, 2, 3], title="t", out_dir=again, name="bars")
    assert _bars.calls == 1
    for ext in ("pdf", "png"):
        assert (again / "figures" / f"bars.{ext}").read_bytes() == (first / "figures" / f"bars.{ext}").read_bytes()
    report.show_figure_of(_bars, [1, 2, 4], title="t", out_dir=other, name="bars")
    assert _bars.calls == 2
    assert (other / "figures" / "bars.png").read_bytes() != (first / "figures" / "bars.png").read_bytes()
    entry = tmp_cache / "figures" / report._figure_key(_bars, ([1, 2, 3],), {"title": "t"})
    (entry / "figure.png").write_bytes(b"damaged")
    with pytest.warns(UserWarning, match=f"figure cache {entry}: figure.png: .*rendering the figure again"):
        report.show_figure_of(_bars, [1, 2, 3], title="t", out_dir=healed, name="bars")
    assert _bars.calls == 3
    assert (healed / "figures" / "bars.png").read_bytes() == (first / "figures" / "bars.png").read_bytes()
    assert (entry / "figure.png").read_bytes() == (first / "figures" / "bars.png").read_bytes()  # stored again
