"""A grid's parameter file (YAML) and its expansion into validated runs; nothing here runs anything.

``read_spec`` reads a file with its ``extends`` chain, ``expand`` gives each run's parameters,
``build_grid`` / ``load_grid`` validate every run (all problems of all runs reported together, one
line per distinct problem with the runs it concerns) and place it in ``<output_root>/<run id>``;
``run_folders`` finds those folders without validating (no torch: for reading finished runs).
The file format is ``SPEC_FORMAT`` (also in the README and in ``python -m longtail.grid --help``).
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import config, rundir
from .fileio import one_line
from .params import DEFAULTS, SCHEMA, ParameterError, json_type_errors, resolve, validate

#: the parameter file's format: an example, then the rules (README and ``--help`` show both as they are)
SPEC_EXAMPLE = """\
name: default                  # optional; default: the file name without .yaml
extends: other.yaml            # optional; a path relative to this file
notebook: notebooks/train.py   # optional; relative to the project root
output_root: runs/default      # optional; default: <LT_RUNS_DIR or <project>/runs>/<name>
base:                          # parameters of every run (any key of longtail.params.SCHEMA)
  dataset: eu_moths
grid:                          # axes: the runs are the cartesian product, last axis fastest
  loss: [ce, focal, ldam]
  seed: [0, 1, 2]
overrides:                     # parameters set when a run's value of a parameter equals the key
  loss:
    focal: {loss_params: {gamma: 2.0}}
    ldam: {drw_epoch: 20, loss_params: {max_m: 0.5, s: 30}}
"""
SPEC_RULES = """\
A run's parameters are `base`, then its axis values, then every matching override (matched on
the values before overrides, applied in the file's order).  A parameter's value is always
replaced whole (`loss_params` of an override replaces the base's `loss_params`).  With
`extends` the child's `base` and `overrides` are merged into the parent's (key by key;
overrides per parameter and value), the child's `grid` axes replace the parent's axes of the
same name (other parent axes stay), `notebook` is inherited, `name` and `output_root` are
not.  Numbers such as `1e-4` are read as floats (YAML 1.2), not as strings.  Values are JSON
types only (str, int, float, bool, null, lists, mappings): a `!!binary`, `!!set` or date is
refused.  An empty or non-UTF-8 file, an unknown top-level key, and an override value that is
no valid value of its parameter are refused; every run is validated before any run starts.
"""
SPEC_FORMAT = SPEC_EXAMPLE + "\n" + SPEC_RULES
SPEC_KEYS = ("name", "extends", "notebook", "output_root", "base", "grid", "overrides")
#: the notebook a grid runs unless its file names another
NOTEBOOK = "notebooks/train.py"
#: the grid's table of runs, in its output root
TABLE_FILE = "runs.csv"


class GridError(ParameterError):
    """A bad parameter file or bad run parameters; nothing was run."""


# --------------------------------------------------------------------------------------------- YAML

class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads 1e-4 / 5E+3 as floats (YAML 1.2), as people write them."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def parse_value(text: str, where: str = "value"):
    """A command-line value, read as YAML (``0.1`` -> float, ``[1, 2]`` -> list, ``null`` -> None);
    only JSON types (``longtail.params.json_type_errors``): a ``!!binary`` or ``!!set`` is refused."""
    try:
        value = yaml.load(text, Loader=_Loader) if text.strip() else ""
    except yaml.YAMLError as exc:
        raise GridError(f"{where}: {text!r} is not a valid YAML value: {one_line(exc)}") from None
    bad = json_type_errors(value, where)
    if bad:
        raise GridError("\n".join(bad))
    return value


# --------------------------------------------------------------------------------- spec and expand

def read_spec(path: str | os.PathLike, _chain: tuple = ()) -> dict:
    """The parameter file with its ``extends`` chain merged (``base``, ``grid``, ``overrides``, ...)."""
    path = Path(path).resolve()
    if path in _chain:
        raise GridError("extends cycle: " + " -> ".join(str(p) for p in (*_chain, path)))
    if not path.is_file():
        where = f" (extended by {_chain[-1]})" if _chain else ""
        raise GridError(f"parameter file {path} does not exist{where}")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except UnicodeDecodeError as exc:
        raise GridError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save the file as UTF-8") from None
    except yaml.YAMLError as exc:
        raise GridError(f"{path}: not valid YAML: {exc}") from None
    if raw is None:  # empty, or comments only: running every default is never what was meant
        raise GridError(f"{path}: the file is empty; a grid needs base: and/or grid: "
                        "(see python -m longtail.grid --help)")
    if not isinstance(raw, dict):
        raise GridError(f"{path}: expected a mapping with keys {', '.join(SPEC_KEYS)}")
    bad = json_type_errors(raw, "", scalar_keys=True)  # before anything reads a value
    if bad:
        raise GridError(f"{path}: only JSON types are accepted; nothing was run:\n  " +
                        "\n  ".join(b.lstrip(".") for b in bad))
    unknown = sorted(set(raw) - set(SPEC_KEYS))
    if unknown:
        raise GridError(f"{path}: unknown top-level key(s) {unknown}; valid keys: {', '.join(SPEC_KEYS)} "
                        "(run parameters go under base:)")
    for key, kind in (("base", dict), ("grid", dict), ("overrides", dict)):
        if raw.get(key) is None:
            raw[key] = {}
        if not isinstance(raw[key], kind):
            raise GridError(f"{path}: {key}: must be a mapping, got {type(raw[key]).__name__}")
    spec = {"name": raw.get("name") or path.stem, "path": str(path), "notebook": raw.get("notebook"),
            "output_root": raw.get("output_root"), "base": raw["base"], "grid": raw["grid"], "overrides": raw["overrides"]}
    if raw.get("extends"):
        parent = read_spec(path.parent / str(raw["extends"]), (*_chain, path))
        spec["base"] = {**parent["base"], **spec["base"]}
        spec["grid"] = {**parent["grid"], **spec["grid"]}
        merged = copy.deepcopy(parent["overrides"])
        for key, by_value in spec["overrides"].items():
            into = merged.setdefault(key, {})
            if isinstance(by_value, dict) and isinstance(into, dict):
                for value, params in by_value.items():
                    into[value] = {**(into.get(value) or {}), **(params or {})}
            else:
                merged[key] = by_value
        spec["overrides"] = merged
        spec["notebook"] = spec["notebook"] or parent["notebook"]
    return spec


def _same(a, b) -> bool:
    """Does a run's value equal an override key?  (100 == 100.0; True is not 1; 'x' == 'x')."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b or (a is not None and b is not None and str(a) == str(b))


def _check_spec(spec: dict) -> None:
    where = spec.get("path") or "grid"
    for axis, values in (spec.get("grid") or {}).items():
        if not isinstance(values, list) or not values:
            raise GridError(f"{where}: grid axis {axis!r} must be a non-empty list of values, got {values!r} "
                            f"(a constant goes under base:)")
    for key, by_value in (spec.get("overrides") or {}).items():
        if key not in SCHEMA:
            raise GridError(f"{where}: overrides on unknown parameter {key!r}; valid parameters: {', '.join(SCHEMA)}")
        if not isinstance(by_value, dict) or not all(isinstance(v, dict) for v in by_value.values()):
            raise GridError(f"{where}: overrides: {key}: must map each value of {key} to a mapping of parameters, "
                            f"e.g. overrides: {{loss: {{focal: {{loss_params: {{gamma: 2.0}}}}}}}}")
    for section in ("base", "grid"):
        if "output_dir" in (spec.get(section) or {}):
            raise GridError(f"{where}: output_dir is set by the grid (<output_root>/<run id>); use output_root:")


def _override_problems(spec: dict, labels: list[dict]) -> list[str]:
    """Overrides that would silently change nothing: a value that is not a valid value of its
    parameter (``loss: {ldamm: ...}``), or a block naming an unknown parameter."""
    where = spec.get("path") or "grid"
    problems = []
    for key, by_value in (spec.get("overrides") or {}).items():
        base = spec.get("base") or {}
        used = [label.get(key, base.get(key, DEFAULTS.get(key))) for label in labels]
        for value, extra in by_value.items():
            unknown = sorted(set(extra) - set(SCHEMA))
            if unknown:
                problems.append(f"{where}: overrides: {key}: {value}: unknown parameter(s) {unknown}; "
                                f"valid parameters: {', '.join(SCHEMA)}")
            if any(_same(u, value) for u in used):
                continue
            try:
                validate({key: value}, check_backbone=False)
            except ParameterError as exc:
                own = [line.strip() for line in str(exc).splitlines()[1:] if line.strip().startswith(f"{key}=")]
                if own:
                    values = ", ".join(dict.fromkeys(value_text(u) for u in used))
                    problems.append(f"{where}: overrides: {key}: {value!r} matches no run and is not a valid value "
                                    f"({own[0]}); values of {key} in this grid: {values}")
    return problems


def _expand(spec: dict) -> list[tuple[dict, dict]]:
    """[(run parameters, axis values)] in grid order (last axis fastest)."""
    _check_spec(spec)
    base = spec.get("base") or {}
    axes = spec.get("grid") or {}
    overrides = spec.get("overrides") or {}
    names = list(axes)
    out = []
    for combo in itertools.product(*(axes[n] for n in names)):
        label = dict(zip(names, combo))
        chosen = {**copy.deepcopy(base), **copy.deepcopy(label)}
        params = dict(chosen)
        for key, by_value in overrides.items():
            value = chosen.get(key, DEFAULTS.get(key))
            for match, extra in by_value.items():
                if _same(value, match):
                    params.update(copy.deepcopy(extra))
        out.append((params, label))
    return out


def expand(spec: dict) -> list[dict]:
    """The parameters of every run of a spec (``base``, ``grid``, ``overrides``): not yet validated."""
    return [params for params, _ in _expand(spec)]


# ----------------------------------------------------------------------------------------- the grid

def label_text(label: dict) -> str:
    """``loss=focal seed=0``: a run's axis values, as the grid's progress and summary show them."""
    return " ".join(f"{k}={value_text(v)}" for k, v in label.items())


def value_text(v) -> str:
    """A parameter value as text: a list or mapping as (sorted) JSON, anything else as ``str``."""
    return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else str(v)


@dataclass
class Grid:
    """A validated grid: ``runs`` are resolved parameter dicts with ``output_dir`` set."""

    name: str
    notebook: Path
    output_root: Path
    runs: list[dict]
    labels: list[dict]  # the axis values of each run
    axes: dict = field(default_factory=dict)
    path: Path | None = None
    spec: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    variant: str = ""  # "set-<hash>" for a grid changed by --set: its table must not replace the file's

    @property
    def table_path(self) -> Path:
        """``<output_root>/runs.csv``, or ``runs-set-<hash>.csv`` for a ``--set`` variant of the grid."""
        return self.output_root / (TABLE_FILE if not self.variant else f"runs-{self.variant}.csv")

    @property
    def ids(self) -> list[str]:
        return [Path(r["output_dir"]).name for r in self.runs]

    def __len__(self) -> int:
        return len(self.runs)

    def select(self, only: dict | None) -> "Grid":
        """The runs whose parameter ``key`` is one of ``only[key]`` for every key (AND over keys)."""
        if not only:
            return self
        bad = sorted(k for k in only if k not in SCHEMA)
        if bad:
            raise GridError(f"--only: unknown parameter(s) {bad}; grid axes: {', '.join(self.axes) or '(none)'}")
        keep = [i for i, r in enumerate(self.runs)
                if all(any(_same(r[k], v) for v in values) for k, values in only.items())]
        sub = copy.copy(self)
        sub.runs, sub.labels = [self.runs[i] for i in keep], [self.labels[i] for i in keep]
        return sub

    def statuses(self) -> list[str]:
        return [rundir.status(r["output_dir"]) for r in self.runs]


def output_root_of(spec: dict, override: str | os.PathLike | None = None) -> Path:
    """Where a spec's run folders go: ``override``, else its ``output_root`` (relative to the project
    root), else ``<runs dir>/<name>``."""
    if override is not None:
        return Path(override).expanduser().resolve()
    if spec.get("output_root"):
        return config.from_project_root(spec["output_root"])
    return (config.runs_dir() / str(spec.get("name") or "grid")).resolve()


def run_folders(path: str | os.PathLike) -> tuple[str, list[Path]]:
    """(name, run folders) of a parameter file, where ``load_grid`` places its runs, without
    validating them: reading finished runs needs neither torch nor the data."""
    name, shown = shown_parameters(path)
    return name, list(shown)


def shown_parameters(path: str | os.PathLike) -> tuple[str, dict[Path, dict]]:
    """(name, {run folder: the grid's values of ``rundir.SHOWN_NOT_COMPUTED``}) of a parameter file: a
    run found under its id may have been run by another grid or protocol, and shows what this grid asks."""
    spec = read_spec(path)
    root = output_root_of(spec)
    out: dict[Path, dict] = {}
    for params, _ in _expand(spec):
        resolved = resolve(params)
        out.setdefault(rundir.folder_of(root, params), {k: resolved[k] for k in rundir.SHOWN_NOT_COMPUTED})
    return str(spec.get("name") or "grid"), out


def build_grid(spec: dict, *, output_root: str | os.PathLike | None = None, sets: dict | None = None,
               check_backbone: bool = True) -> Grid:
    """Expand and validate a spec (see ``read_spec``); raises GridError listing every problem."""
    spec = copy.deepcopy(spec)
    spec.setdefault("base", {})
    spec.setdefault("grid", {})
    spec.setdefault("overrides", {})
    for key, value in (sets or {}).items():
        top = key.split(".", 1)[0]
        if top in spec["grid"]:
            raise GridError(f"--set {key}: {top!r} is a grid axis; select its values with --only {top}=VALUE")
        _set_dotted(spec["base"], key, value)
    name = str(spec.get("name") or "grid")
    root = output_root_of(spec, output_root)
    notebook = config.from_project_root(spec.get("notebook") or NOTEBOOK)
    if not notebook.is_file():
        raise GridError(f"notebook {notebook} does not exist")

    expanded = _expand(spec)
    bad_overrides = _override_problems(spec, [label for _, label in expanded])
    if bad_overrides:
        raise GridError("\n".join(bad_overrides + ["nothing was run"]))
    problems: dict[str, list[dict]] = {}
    runs, labels, seen, notes = [], [], {}, []
    for params, label in expanded:
        try:
            resolved = validate(params, check_backbone=check_backbone)
        except ParameterError as exc:
            for line in str(exc).splitlines()[1:]:
                problems.setdefault(line.strip(), []).append(label)
            continue
        folder = rundir.folder_of(root, resolved)
        rid = folder.name
        if rid in seen:
            notes.append(f"runs {label_text(seen[rid]) or '(base)'} and {label_text(label)} have the same parameters "
                         f"(id {rid}); running it once")
            continue
        seen[rid] = label
        resolved["output_dir"] = str(folder)
        runs.append(resolved)
        labels.append(label)
    where = spec.get("path") or name
    if problems:
        n_bad = len({json.dumps(lab, sort_keys=True, default=str) for labs in problems.values() for lab in labs})
        lines = [f"{where}: {n_bad} of {len(expanded)} runs have invalid parameters; nothing was run:"]
        for problem, labs in problems.items():
            lines.append(f"  {problem}")
            if labs[0] and not problem.startswith("valid parameters"):
                if len(labs) == len(expanded):
                    lines.append("      (every run)")
                else:
                    shown = "; ".join(label_text(lab) for lab in labs[:3])
                    more = f" (+{len(labs) - 3} more)" if len(labs) > 3 else ""
                    lines.append(f"      in {len(labs)} run(s): {shown}{more}")
        raise GridError("\n".join(lines))
    variant = ("set-" + hashlib.sha1(json.dumps(sets, sort_keys=True).encode()).hexdigest()[:8]) if sets else ""
    return Grid(name=name, notebook=notebook, output_root=root, runs=runs, labels=labels,
                axes=dict(spec["grid"]), path=Path(spec["path"]) if spec.get("path") else None, spec=spec, notes=notes,
                variant=variant)


def load_grid(path: str | os.PathLike, *, output_root: str | os.PathLike | None = None, sets: dict | None = None,
              check_backbone: bool = True) -> Grid:
    """Read, expand and validate a parameter file."""
    return build_grid(read_spec(path), output_root=output_root, sets=sets, check_backbone=check_backbone)


def _set_dotted(d: dict, key: str, value) -> None:
    """``d[a][b] = value`` for key ``a.b`` (a dict parameter's entry; its other entries kept)."""
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        current = d.get(part, DEFAULTS.get(part) if depth == 0 else None)
        d[part] = copy.deepcopy(current) if isinstance(current, dict) else {}
        d = d[part]
    d[parts[-1]] = value


