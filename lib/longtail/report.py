"""The report: the tables and figures as files for the thesis, and the rendered HTML page.

| part            | what                                                                              |
|-----------------|-----------------------------------------------------------------------------------|
| files           | ``save_table`` (LaTeX + CSV), ``save_figure`` (PDF + PNG), named for ``\\input``;    |
|                 | ``show_table`` / ``show_figure``: saved, shown in the notebook with links to the  |
|                 | files (``file_links``), figures with alternative text (``figure_alt``)            |
| provenance      | ``provenance``: git commit, parameter files, package versions, hardware           |
| report          | ``build_report``: papermill runs ``notebooks/explore.py`` and ``analysis.py``,    |
|                 | nbconvert renders ``<out>/index.html`` (code hidden) with a provenance header and |
|                 | links to every run's notebook, rendered to ``<out>/runs/<grid>/<id>.html``         |
|                 | (``render_run_pages``) below its metrics and parameters (``run_page_head``)       |

The numbers come from ``longtail.results`` (the runs) and ``longtail.datasummary`` (the data set).

Command line (``make report``)::

    python -m longtail.report params/default.yaml [params/cifar10_lt.yaml ...] [--out report]

A source is a grid's parameter file (its runs, in ``<output_root>/<id>``), a folder of run folders,
or one run folder.  Only finished runs (``rundir.status`` done) are analysed; finding and reading them
needs only the run folders' JSON and CSV files (this process imports no torch; its notebooks' kernels do).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import pandas as pd

from . import config, rundir
from .fileio import checksum_problem, file_checksum
from .gridspec import expand, read_spec
from .notebook import KERNEL, execute as execute_notebook
from .params import resolve
from .results import Table, collect_runs, method_order, project_path, source_runs
from .tables import run_metrics_table

NOTEBOOKS = {"explore": "notebooks/explore.py", "analysis": "notebooks/analysis.py"}
#: the explore notebook's data-set parameters, taken from the first grid's first run
EXPLORE_KEYS = ("dataset", "data_root", "dataset_params", "imbalance_factor", "profile", "group_scheme",
                "group_thresholds", "test_longtailed_rule", "n_max", "subset_seed", "class_order", "val_fraction",
                "balanced_size")


# ============================================================================ files for the thesis

def _latex_escape(s: str) -> str:
    s = str(s)
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"),
                 ("_", r"\_"), ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"), ("^", r"\^{}")):
        s = s.replace(a, b)
    return s.replace("±", r"$\pm$").replace("−", "$-$").replace("Δ", r"$\Delta$").replace("τ", r"$\tau$")


def save_table(table: Table | pd.DataFrame, out_dir, name: str | None = None, caption: str | None = None) -> list[Path]:
    """``<out_dir>/tables/<name>.tex`` (a ``table`` environment with caption and label
    ``tab:<name>``, for ``\\input``) and ``<name>.csv`` (the same cells)."""
    if isinstance(table, Table):
        frame, name, caption = table.frame, name or table.name, caption or table.caption
    else:
        frame = table
    folder = Path(out_dir) / "tables"
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / f"{name}.csv")
    esc = frame.copy()
    if not isinstance(esc.index, pd.RangeIndex):  # the index as the first column(s)
        esc.index = esc.index.set_names([n if n else "" for n in esc.index.names])
        esc = esc.reset_index()
    if isinstance(esc.columns, pd.MultiIndex):
        esc.columns = pd.MultiIndex.from_tuples([tuple(_latex_escape(x) for x in c) for c in esc.columns])
    else:
        esc.columns = [_latex_escape(c) for c in esc.columns]
    esc = esc.map(lambda v: _latex_escape(v) if isinstance(v, str) else v)
    cap = _latex_escape(re.sub(r"^Table A\.\d+: ", "", caption or name))
    tex = esc.to_latex(index=False, escape=False, caption=cap, label=f"tab:{name}", position="htbp", multicolumn_format="c",
                       float_format=lambda x: f"{x:.10g}")  # as rounded
    (folder / f"{name}.tex").write_text(tex)
    return [folder / f"{name}.tex", folder / f"{name}.csv"]


#: where the notebooks' kernels leave each figure's render times (``<out>/<RENDER_TIMES>/<name>.json``);
#: ``build_report`` gathers them into ``provenance.json`` (``figure_render_s``) and removes the folder
RENDER_TIMES = ".figure_render_s"


def save_figure(fig, out_dir, name: str, dpi: int = 150, *, renders: list | None = None) -> list[Path]:
    """``<out_dir>/figures/<name>.pdf`` and ``.png``; each render's seconds appended to ``renders``."""
    folder = Path(out_dir) / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}.pdf", folder / f"{name}.png"]
    renders = [] if renders is None else renders
    renders.append(_timed(fig.savefig, paths[0], bbox_inches="tight"))
    renders.append(_timed(fig.savefig, paths[1], bbox_inches="tight", dpi=dpi))
    return paths


def _timed(call, *args, **kwargs) -> float:
    t0 = time.perf_counter()
    call(*args, **kwargs)
    return time.perf_counter() - t0


def _record_renders(out_dir, name: str, renders: list[float]) -> None:
    """The seconds of a figure's renders (one file a figure: the two notebooks' kernels write at once)."""
    folder = Path(out_dir) / RENDER_TIMES
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps([round(r, 4) for r in renders]))


def gather_render_times(out_dir) -> dict[str, list[float]]:
    """``{figure: [seconds of each render]}`` the notebooks recorded (``show_figure``), the folder removed."""
    import shutil
    folder = Path(out_dir) / RENDER_TIMES
    times = {f.stem: json.loads(f.read_text()) for f in sorted(folder.glob("*.json"))}
    shutil.rmtree(folder, ignore_errors=True)
    return times


def file_links(paths, out_dir) -> str:
    """HTML links to ``paths`` relative to ``out_dir`` (where index.html and the executed notebooks
    lie), labelled by type: LaTeX, CSV, PDF, PNG."""
    kinds = {".tex": "LaTeX", ".csv": "CSV", ".pdf": "PDF", ".png": "PNG", ".json": "JSON"}
    links = []
    for p in paths:
        rel = os.path.relpath(Path(p).resolve(), Path(out_dir).resolve()).replace(os.sep, "/")
        links.append(f'<a href="{_html_escape(rel)}">{kinds.get(Path(p).suffix, Path(p).suffix)}</a>')
    return f'<span class="lt-files">{" · ".join(links)}</span>'


def show_table(table: Table | pd.DataFrame, out_dir=None, name: str | None = None, caption: str | None = None):
    """Save (when ``out_dir``) and return a styled table for the notebook, its caption above
    (with links to the saved LaTeX and CSV files)."""
    links = ""
    if out_dir is not None:
        links = " " + file_links(save_table(table, out_dir, name, caption), out_dir)
    frame, caption = (table.frame, caption or table.caption) if isinstance(table, Table) else (table, caption)
    if links:
        caption = _html_escape(caption or name or (table.name if isinstance(table, Table) else "")) + links
    if frame.index.nlevels == 1 and frame.index.name:  # the index name in the header row, not a row of its own
        frame = frame.copy()
        names = [None] * (frame.columns.nlevels - 1) + [frame.index.name]
        frame.index.name = None
        frame.columns = frame.columns.set_names(names)
    style = frame.style
    if caption:
        style = style.set_caption(caption)
    fmt = {c: "{:.1f}" for c in frame.columns if pd.api.types.is_float_dtype(frame[c])}
    return style.format(fmt, na_rep="–").set_table_styles(
        [{"selector": "caption", "props": "caption-side: top; text-align: left; font-weight: bold; "
                                          "padding-bottom: 0.4em;"}])


def figure_alt(fig) -> str:
    """Alternative text of a figure from its own words: its title, the panel titles and axis labels."""
    parts = [fig.get_suptitle()]
    for ax in fig.axes:
        if ax.get_label() == "<colorbar>":
            continue
        plotted = " against ".join(t for t in (ax.get_ylabel(), ax.get_xlabel()) if t)
        parts.append(": ".join(t for t in (ax.get_title(loc="left") or ax.get_title(), plotted) if t))
    text = "; ".join(dict.fromkeys(p.replace("\n", " ") for p in parts if p))
    return text or "figure"


def show_figure(fig, out_dir=None, name: str | None = None, alt: str | None = None, *, _keep=None):
    """Show a figure in the notebook as a PNG with alternative text (``alt``, else ``figure_alt``),
    and, with ``out_dir``, save it (``save_figure``) and link its PDF and PNG below it."""
    import io

    import matplotlib.pyplot as plt
    alt = alt or figure_alt(fig)
    buf = io.BytesIO()
    dpi = 100
    renders = [_timed(fig.savefig, buf, format="png", bbox_inches="tight", dpi=dpi)]
    paths = save_figure(fig, out_dir, name, renders=renders) if out_dir is not None else None
    plt.close(fig)
    if paths is not None:
        _record_renders(out_dir, name, renders)
        if _keep is not None:
            _store_figure(_keep, buf.getvalue(), paths, alt)
    _display_figure(buf.getvalue(), alt, name, out_dir, paths)


def show_figure_of(build, *args, out_dir=None, name: str | None = None, alt: str | None = None, **kwargs):
    """``show_figure(build(*args, **kwargs), out_dir, name, alt)``, built and rendered once for the
    same inputs: its renders (the PNG shown, the PDF and PNG files) and alternative text are kept in
    the cache (``<cache>/figures/<key>/``, each file's size and CRC-32 checked on every read; a bad
    entry is rendered again, with a warning naming it), ``key`` the hash of ``build`` (its module's
    source and its name), its inputs (pickled), matplotlib's settings, the versions of matplotlib and
    seaborn, and this module's source.  A report whose figure has the same key copies the files
    instead of building and rendering (about 1 s a figure, 5 s the confusion matrices).  Inputs that
    cannot be pickled, or no ``out_dir``: built and rendered every time."""
    import shutil
    key = _figure_key(build, args, kwargs) if out_dir is not None else None
    if key is None:
        return show_figure(build(*args, **kwargs), out_dir, name, alt)
    entry = config.cache_dir() / "figures" / key
    if _cached_figure(entry) is None:
        return show_figure(build(*args, **kwargs), out_dir, name, alt, _keep=entry)
    folder = Path(out_dir) / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}.pdf", folder / f"{name}.png"]
    for cached, path in zip(("figure.pdf", "figure.png"), paths):
        shutil.copyfile(entry / cached, path)
    _display_figure((entry / "shown.png").read_bytes(), alt or (entry / "alt.txt").read_text(), name, out_dir, paths)


#: a figure cache entry's files: the PNG shown in the notebook, the PDF and PNG files, the alternative text
FIGURE_FILES = ("shown.png", "figure.pdf", "figure.png", "alt.txt")


def _display_figure(png: bytes, alt: str, name, out_dir, paths) -> None:
    from IPython.display import HTML, Image, display
    display(Image(data=png, format="png", alt=alt))
    if paths is not None:
        display(HTML(f'<p class="lt-figure-files">Figure <code>{_html_escape(name)}</code>: '
                     f'{file_links(paths, out_dir)}</p>'))


def _figure_key(build, args, kwargs) -> str | None:
    import hashlib
    import importlib.metadata as md
    import inspect
    import pickle

    import matplotlib
    try:
        inputs = pickle.dumps((args, sorted(kwargs.items())), protocol=5)
    except Exception:  # noqa: BLE001 - e.g. a lambda among the inputs: no cache
        return None
    h = hashlib.sha1()
    for part in (build.__module__, build.__qualname__, inspect.getsource(sys.modules[build.__module__]),
                 inspect.getsource(sys.modules[__name__]), matplotlib.__version__, md.version("seaborn"),
                 repr(sorted(matplotlib.rcParams.items()))):
        h.update(str(part).encode() + b"\0")
    h.update(inputs)
    return h.hexdigest()[:20]


def _cached_figure(entry: Path) -> Path | None:
    """``entry`` when it is complete and every file matches its stored size and checksum, else None
    (a bad entry removed, with a warning naming it)."""
    import shutil
    import warnings

    if not entry.exists():
        return None
    try:
        expected = json.loads((entry / "checksums.json").read_text())
        problem = next((f"{f}: {why}" for f in FIGURE_FILES if (why := checksum_problem(entry / f, expected.get(f)))),
                       None)
    except (OSError, ValueError, AttributeError):
        problem = "checksums.json unreadable"
    if problem is None:
        return entry
    warnings.warn(f"figure cache {entry}: {problem}; rendering the figure again", stacklevel=3)
    shutil.rmtree(entry, ignore_errors=True)
    return None


def _store_figure(entry: Path, shown_png: bytes, paths: list[Path], alt: str) -> None:
    """The renders into ``entry``, complete or not at all (written beside it, then renamed; when
    another kernel stored it first, its entry is kept)."""
    import shutil

    tmp = entry.with_name(f"{entry.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "shown.png").write_bytes(shown_png)
    shutil.copyfile(paths[0], tmp / "figure.pdf")
    shutil.copyfile(paths[1], tmp / "figure.png")
    (tmp / "alt.txt").write_text(alt)
    (tmp / "checksums.json").write_text(json.dumps({f: file_checksum(tmp / f) for f in FIGURE_FILES}))
    try:
        os.rename(tmp, entry)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


# ============================================================================ benchmark records

BENCH_FOLDERS = ("bench/results", "bench/measured")  # written by `make bench`; kept from lent GPU machines
#: bench tables that belong beside the published numbers (the CIFAR-10-LT ablation), not among the speed figures
PUBLISHED_ABLATION_PREFIX = "cifar10_lt_ablation"
#: bench tables of params/thesis.yaml runs (our schedule) fine-tuned on a lent GPU: shown beside the thesis's numbers
THESIS_FINETUNE_PREFIX = "thesis_finetune"
#: bench tables that hold results rather than speed figures (shown in their own sections)
RESULT_TABLE_PREFIXES = (PUBLISHED_ABLATION_PREFIX, THESIS_FINETUNE_PREFIX)


def benchmark_tables(folder=None) -> list[tuple[str, str]]:
    """``(file name, markdown)`` of every ``*.md`` in ``folder``, or by default in ``bench/results/``
    (what ``make bench`` wrote on this machine) and then ``bench/measured/`` (figures measured once
    on a lent GPU machine, committed because CI cannot regenerate them)."""
    folders = [Path(folder)] if folder is not None else [config.PROJECT_ROOT / f for f in BENCH_FOLDERS]
    return [(p.name, p.read_text()) for f in folders if f.is_dir() for p in sorted(f.glob("*.md"))]


# ============================================================================ provenance and rendering

def provenance(sources, runs: pd.DataFrame | None = None) -> dict:
    """What made this report: git commit (and whether the tree had changes), the parameter files'
    content, package versions, hardware (CPU count, GPU), date, and the runs' own hardware."""
    import subprocess
    gpu = None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)
        gpu = ", ".join(sorted(set(out.stdout.split("\n")) - {""})) or None
    except (OSError, subprocess.SubprocessError):
        pass
    files = {}
    for s in sources:
        p = project_path(s)
        files[str(s)] = p.read_text() if p.is_file() else f"(a folder of runs: {p.resolve()})"
    info = {**config.environment(), "parameter_files": files, "gpu": gpu}
    if runs is not None:  # also with no finished run: "0 finished, 8 without results"
        hw = []
        for d in (runs["run_dir"] if "run_dir" in runs else []):
            env = Path(d) / rundir.ENVIRONMENT_FILE
            if env.exists():
                e = json.loads(env.read_text())
                hw.append(e.get("gpu") or f"CPU ({e.get('cpu_count')} cores)")
        info["runs"] = {"finished": len(runs), "unfinished": len(runs.attrs.get("unfinished", [])),
                        "hardware": sorted(set(hw)),
                        "run_wall_s": round(float(runs["wall_s"].sum()) if "wall_s" in runs else 0.0, 1)}
    return info


def _html_escape(s) -> str:
    import html
    return html.escape(str(s))


def header_html(info: dict, wall_s: float | None, sections: list[tuple[str, str]],
                links: list[tuple[str, str]] | None = None) -> str:
    """The report's first cell: title, contents, provenance (the parameter files folded) and
    ``links`` to its files ((label, path relative to the report))."""
    e = _html_escape
    commit = info.get("git_commit") or "unknown"
    commit_txt = f"{commit[:12]}{' (with uncommitted changes)' if info.get('git_dirty') else ''}"
    pk = ", ".join(f"{k} {v}" for k, v in info["packages"].items() if v)
    runs = info.get("runs", {})
    rows = [("Date", info["date"]), ("Git commit", commit_txt),
            ("Parameter files", ", ".join(info["parameter_files"])),
            ("Runs", f"{runs.get('finished', 0)} finished, {runs.get('unfinished', 0)} without results; trained on "
                     f"{', '.join(runs.get('hardware', [])) or 'unknown'}; training wall time "
                     f"{runs.get('run_wall_s', 0) / 60:.1f} min in total"),
            ("Report machine", f"{info['cpu_count']} CPU cores, GPU: {info.get('gpu') or 'none'}; "
                               f"Python {info['python']} on {info['platform']}"),
            ("Packages", pk)]
    if wall_s is not None:
        rows.append(("Report wall time", f"{wall_s:.1f} s (executing the notebooks and rendering)"))
    table = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows)
    if links:
        table += ("<tr><th>Files</th><td>" + " · ".join(f'<a href="{e(href)}">{e(label)}</a>' for label, href in links)
                  + "</td></tr>")
    files = "".join(f"<details><summary><code>{e(k)}</code></summary><pre>{e(v)}</pre></details>"
                    for k, v in info["parameter_files"].items())
    toc = " · ".join(f'<a href="#{a}">{e(t)}</a>' for a, t in sections)
    return (f'<div class="lt-header"><h1>Deep long-tailed image recognition: results</h1>'
            f'<p class="lt-toc">{toc}</p><table class="lt-prov">{table}</table>{files}</div>')


def runs_html(runs: pd.DataFrame, links: dict[str, str]) -> str:
    """A table of every finished run with a link to its executed notebook (when rendered)."""
    e = _html_escape
    if not len(runs):
        return "<p>No finished runs.</p>"
    rank = {m: i for i, m in enumerate(method_order(runs["method"]))}
    runs = runs.assign(_m=runs["method"].map(rank)).sort_values(
        ["grid", "dataset", "backbone", "train_set", "_m", "seed"], kind="stable")
    head = ["grid", "run", "dataset", "backbone", "training set", "loss", "seed", "balanced top-1", "tail top-1",
            "run page"]
    body = []
    for _, r in runs.iterrows():
        link = links.get(r["run_dir"])
        cells = [r["grid"], r["run_id"], r["dataset"], r["backbone"], r["train_set"], r["method"], r.get("seed"),
                 f"{100 * r['balanced/acc1']:.1f} %", f"{100 * r['tail/acc1']:.1f} %"]
        row = "".join(f"<td>{e(c)}</td>" for c in cells)
        row += f'<td><a href="{e(link)}">metrics, parameters, notebook</a></td>' if link else "<td>–</td>"
        body.append(f"<tr>{row}</tr>")
    unfinished = runs.attrs.get("unfinished", [])
    note = (f"<p>{len(unfinished)} run(s) of the grids have no results (not run yet or failed; "
            f"<code>python -m longtail.grid PARAMS --dry-run</code> lists them).</p>" if unfinished else "")
    return (f'<table class="lt-runs"><thead><tr>{"".join(f"<th>{h}</th>" for h in head)}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>{note}')


_CSS = """
body.jp-Notebook { max-width: 1400px; margin: 0 auto; }
.lt-header h1 { margin-top: 0.2em; }
.lt-prov th { text-align: left; padding-right: 1em; vertical-align: top; white-space: nowrap; }
.lt-prov td { text-align: left; }
.lt-header details { margin: 0.3em 0; }
.lt-header pre { background: #f6f6f6; padding: 0.5em; font-size: 85%; max-height: 24em; overflow: auto; }
.lt-runs { margin-left: 0 !important; }
.lt-runs td, .lt-runs th { padding: 0.15em 0.6em; text-align: left; }
.jp-RenderedHTMLCommon table caption { caption-side: top; text-align: left; font-weight: bold; }
.jp-OutputArea-output td, .jp-OutputArea-output th { white-space: nowrap !important; font-size: 11.5px;
  padding: 0.2em 0.45em !important; }
.jp-OutputArea-output th[colspan] { text-align: center !important; }
.lt-prov td { white-space: normal !important; }
/* wide tables scroll inside their output instead of being clipped (the lab template's table-cell
   layout with overflow: hidden clips them); captions wrap; text wraps between words */
body.jp-Notebook .jp-OutputArea-child { display: block; overflow: visible; }
body.jp-Notebook .jp-OutputArea-output { display: block; overflow-x: auto; max-width: 100%; }
body.jp-Notebook .jp-RenderedHTMLCommon table caption { white-space: normal; max-width: min(60em, calc(100vw - 5em));
  position: sticky; left: 0; }
body.jp-Notebook .jp-RenderedText pre { word-break: normal; overflow-wrap: break-word; }
.lt-files { font-weight: normal; font-size: 90%; white-space: nowrap; }
.lt-figure-files { margin: 0 0 1em 0; font-size: 90%; color: #555; }
.lt-run-head { margin-left: 0 !important; }
.lt-run-head td, .lt-run-head th { padding: 0.1em 0.6em !important; text-align: left; }
/* stderr (progress bars, logs) in grey, not the alarm pink of an error */
body.jp-Notebook .jp-OutputArea-output[data-mime-type$="jupyter.stderr"] { background: #f4f4f4; }
.lt-back { font-size: 95%; }
"""

# nbconvert's lab template without the scripts it loads from CDNs (require.js, MathJax, mermaid): the
# report is self-contained, opens offline and logs no network errors.
_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{% block extra_css %}<style type="text/css">""" + _CSS + """</style>{% endblock extra_css %}
{% block data_png scoped %}
{%- set alt = output | get_metadata('alt', 'image/png') -%}
{%- set width = output | get_metadata('width', 'image/png') -%}
<div class="jp-RenderedImage jp-OutputArea-output {{ extra_class }}">
<img src="data:image/png;base64,{{ output.data['image/png'] | escape_html }}" alt="{{ (alt or 'figure') | escape_html }}"
{%- if width is not none %} width={{ width | escape_html }}{%- endif %}>
</div>
{%- endblock data_png %}
"""


def html_exporter(exclude_input: bool = True):
    import jinja2
    from nbconvert import HTMLExporter
    return HTMLExporter(template_name="lab", extra_loaders=[jinja2.DictLoader({"lt_report.html.j2": _TEMPLATE})],
                        template_file="lt_report.html.j2", exclude_input=exclude_input,
                        exclude_input_prompt=True, exclude_output_prompt=True, embed_images=True)


def run_page_head(run: pd.Series | dict, back: str) -> str:
    """The top of a run's page: a link back to the report, what the run is, its metrics (in %, as in
    the report) and its effective parameters (``params.json``: the schema's defaults with the
    grid's values), before the executed notebook."""
    e = _html_escape
    run_dir = Path(run["run_dir"])
    params = json.loads((run_dir / rundir.PARAMS_FILE).read_text())
    metrics = json.loads((run_dir / rundir.RESULT_FILE).read_text())
    table = run_metrics_table(metrics)
    metrics_html = table.to_html(classes="lt-run-head", float_format=lambda v: f"{v:.1f}", na_rep="–", border=0)
    items = [(k, json.dumps(v) if not isinstance(v, str) else v) for k, v in params.items()]
    per_col = -(-len(items) // 3)
    cols = [items[i * per_col:(i + 1) * per_col] for i in range(3)]
    rows = []
    for i in range(per_col):
        cells = "".join(f"<th><code>{e(c[i][0])}</code></th><td>{e(c[i][1])}</td>" if i < len(c) else "<th></th><td></td>"
                        for c in cols)
        rows.append(f"<tr>{cells}</tr>")
    title = f"{run.get('method', params.get('loss'))} on the {params.get('train_set')} training set, seed {params.get('seed')}"
    return (f'<p class="lt-back"><a href="{e(back)}">← back to the report</a></p>'
            f"<h1>Run <code>{e(run_dir.name)}</code> (grid {e(run.get('grid', ''))})</h1>"
            f"<p>{e(title)}; {e(params.get('dataset'))}, {e(params.get('backbone'))} ({e(params.get('mode'))}); "
            f"run folder <code>{e(run_dir)}</code>.</p>"
            f"<h2>Test metrics</h2>{metrics_html}"
            f'<h2>Parameters</h2><p>The values this run used (<code>params.json</code> in the run folder): '
            f"papermill set them in the notebook below, in place of its parameters cell.</p>"
            f'<table class="lt-run-head">{"".join(rows)}</table><h2>The executed notebook</h2>')


#: what a run page leaves out of the executed notebook: the parameters cells (the table above holds
#: the values used) and a warning older runs printed (timm -> tqdm.auto without ipywidgets)
_NOISE = re.compile(r"^\S*tqdm\S*: TqdmWarning: IProgress not found.*\n(  from .autonotebook import.*\n)?", re.M)


def render_run_pages(runs: pd.DataFrame, out_dir, log=print) -> dict[str, str]:
    """Each run's executed notebook as ``<out>/runs/<grid>/<id>.html`` (code shown), headed by
    ``run_page_head``; redone when the notebook or this module is newer than the page.  Returns
    {run_dir: link relative to <out>}."""
    import nbformat
    exporter, links = None, {}
    for _, r in runs.iterrows():
        if not isinstance(r.get("notebook"), str):
            continue
        rel = Path("runs") / str(r["grid"]) / f"{r['run_id']}.html"
        target = Path(out_dir) / rel
        newest = max(Path(r["notebook"]).stat().st_mtime, Path(__file__).stat().st_mtime)
        if not target.exists() or target.stat().st_mtime < newest:
            exporter = exporter or html_exporter(exclude_input=False)
            nb = nbformat.read(r["notebook"], as_version=4)
            nb.cells = [c for c in nb.cells if not {"parameters", "injected-parameters"} & set(c.metadata.get("tags", []))]
            for c in nb.cells:
                for o in c.get("outputs", []):
                    if o.get("output_type") == "stream":  # progress bars as a terminal leaves them: the last state
                        o["text"] = _NOISE.sub("", re.sub(r"[^\n]*\r(?!\n)", "", o["text"]))
                c["outputs"] = [o for o in c.get("outputs", []) if o.get("output_type") != "stream" or o["text"]]
            back = os.path.relpath(Path(out_dir) / "index.html", target.parent).replace(os.sep, "/") + "#runs"
            nb.cells.insert(0, nbformat.v4.new_markdown_cell(run_page_head(r, back)))
            body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": f"run {r['run_id']}"}})
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(body)
        links[r["run_dir"]] = rel.as_posix()
    return links


def _execute(name: str, parameters: dict, out_dir: Path, kernel_name: str):
    """Execute ``NOTEBOOKS[name]`` into ``<out>/<name>.ipynb``; returns (the executed notebook, the
    error or None, wall seconds).  A failed cell's notebook (with the error) is still rendered."""
    import nbformat
    # forked from one server that imported the notebooks' modules (seaborn's SciPy among them) once for both
    ex = execute_notebook(NOTEBOOKS[name], out_dir / f"{name}.ipynb", parameters, kernel_name=kernel_name,
                          forked="report")
    if not ex.output.exists():
        raise RuntimeError(f"{name}: papermill wrote no notebook ({ex.reason})") from ex.error
    return nbformat.read(ex.output, as_version=4), ex.error, ex.wall_s


def _explore_parameters(sources, out_dir: Path) -> dict | None:
    for s in sources:
        _, dirs = source_runs(s)
        for d in dirs:
            pj = d / rundir.PARAMS_FILE
            if pj.exists():
                p = json.loads(pj.read_text())
                break
        else:
            if Path(s).suffix in (".yaml", ".yml"):
                expanded = expand(read_spec(project_path(s)))
                if not expanded:
                    continue
                p = resolve(expanded[0])
            else:
                continue
        return {**{k: p.get(k) for k in EXPLORE_KEYS}, "out_dir": str(out_dir)}
    return None


def build_report(sources, out_dir="report", *, kernel_name: str = KERNEL, explore: bool = True,
                 run_pages: bool = True, log=print) -> Path:
    """Render ``<out_dir>/index.html`` from the runs of ``sources``; see the module docstring.
    Figures and tables go to ``<out_dir>/figures`` and ``<out_dir>/tables``, the executed notebooks
    to ``<out_dir>/explore.ipynb`` and ``analysis.ipynb``.  Raises RuntimeError, after rendering,
    when a notebook failed."""
    from concurrent.futures import ThreadPoolExecutor

    # Everything the threads below import, imported here first: imports racing in threads can
    # deadlock or fail half-initialised (seen in a fresh venv: nbconvert's highlighter importing
    # IPython while a papermill thread did).
    import IPython.lib.lexers  # noqa: F401
    import jupyter_client.kernelspec  # noqa: F401
    import jupytext  # noqa: F401
    import nbconvert  # noqa: F401
    import nbconvert.filters.highlight  # noqa: F401
    import nbformat
    import papermill  # noqa: F401
    t0 = time.time()
    sources = [str(s) for s in ([sources] if isinstance(sources, (str, os.PathLike)) else sources)]
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    runs = collect_runs(sources)
    log(f"report: {len(runs)} finished runs ({len(runs.attrs['unfinished'])} without results) from "
        f"{', '.join(sources)}")
    jobs = {"analysis": {"grids": [str(project_path(s).resolve()) for s in sources], "out_dir": str(out)}}
    if explore and (ep := _explore_parameters(sources, out)):
        jobs = {"explore": ep, **jobs}
    # the two kernels run at once (each mostly waits on its own imports); run pages render meanwhile
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = {name: pool.submit(_execute, name, params, out, kernel_name) for name, params in jobs.items()}
        t_pages = time.time()
        links = render_run_pages(runs, out, log) if run_pages else {}
        t_pages = time.time() - t_pages
        executed = {name: f.result() for name, f in futures.items()}
    errors = {name: err for name, (_, err, _) in executed.items() if err is not None}
    timings = {f"{name}.py": t for name, (_, _, t) in executed.items()} | {"run pages": round(t_pages, 2)}

    sections = [(name, {"explore": "The data set", "analysis": "Results"}[name]) for name in executed]
    sections.append(("runs", "Runs"))
    cells = []
    for name, (nb, _, _) in executed.items():
        cells.append(nbformat.v4.new_markdown_cell(f'<a id="{name}"></a>'))
        cells += [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])
                  and "parameters" not in c.metadata.get("tags", [])]
    cells.append(nbformat.v4.new_markdown_cell('<a id="runs"></a>\n\n## Runs\n\nEvery finished run, with its '
                                               'executed training notebook (parameters, log, learning curves).\n\n'
                                               + runs_html(runs, links)))
    info = provenance(sources, runs)
    info["report_timings_s"] = timings
    info["figure_render_s"] = gather_render_times(out)  # each figure's renders: shown PNG, PDF, PNG file
    wall = time.time() - t0
    files = [(label, href) for label, href in (("provenance.json", "provenance.json"),
                                               ("all runs (CSV)", "tables/runs.csv"),
                                               ("tables (LaTeX, CSV)", "tables/"), ("figures (PDF, PNG)", "figures/"),
                                               *((f"{n}.ipynb", f"{n}.ipynb") for n in executed))
             if href == "provenance.json" or (out / href).exists()]
    cells.insert(0, nbformat.v4.new_markdown_cell(header_html(info, wall, sections, files)))
    report_nb = nbformat.v4.new_notebook(cells=cells, metadata=next(iter(executed.values()))[0].metadata)
    body, _ = html_exporter().from_notebook_node(report_nb, resources={"metadata": {"name": "Long-tailed recognition: report"}})
    (out / "index.html").write_text(body)
    (out / "provenance.json").write_text(json.dumps({**info, "report_wall_s": round(time.time() - t0, 2)}, indent=2))
    log(f"report: {out / 'index.html'} ({time.time() - t0:.1f} s; "
        + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()) + ")")
    if errors:
        raise RuntimeError("; ".join(f"{n}.py failed: {str(e).strip().splitlines()[-1] if str(e).strip() else e!r}"
                                     for n, e in errors.items()) + f" (rendered anyway: {out / 'index.html'})")
    return out / "index.html"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m longtail.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("sources", nargs="+", help="parameter files (params/*.yaml) or folders of runs")
    ap.add_argument("--out", default=str(config.PROJECT_ROOT / "report"), help="report folder (default: %(default)s)")
    ap.add_argument("--kernel", default=KERNEL, help="Jupyter kernel (default: %(default)s)")
    ap.add_argument("--no-explore", action="store_true", help="leave out the data-set notebook")
    ap.add_argument("--no-run-pages", action="store_true", help="do not render the runs' notebooks")
    args = ap.parse_args(argv)
    try:
        build_report(args.sources, args.out, kernel_name=args.kernel, explore=not args.no_explore,
                     run_pages=not args.no_run_pages)
    except (RuntimeError, OSError, ValueError) as exc:  # ValueError: a bad or missing parameter file (GridError)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
