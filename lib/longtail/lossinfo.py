"""What each loss of ``losses.LOSSES`` declares about itself, read without importing torch.

A loss class in ``losses.py`` declares its display ``label``, its ``family`` in the survey's
taxonomy (``longtail.taxonomy``), ``owns_weights`` (its class weights are the method, so DRW may not
re-weight it) and ``cosine_head`` as class attributes.  Reading finished runs (``results``, the
report, the leaderboard) needs the labels and families but no loss, and importing ``losses`` means
importing torch (about 1.4 s, in every report process): so they are read here from ``losses.py``'s
source with ``ast``, the ``LOSSES`` table included, following each class's first base for what it
inherits.  ``tests/test_losses.py`` checks that this reading equals the imported classes' attributes,
and adds a loss to a copy of the package to show it reaches every reader.
"""
from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

from . import taxonomy

LOSSES_SOURCE = Path(__file__).with_name("losses.py")
#: the class attributes a loss declares, with the base class's defaults
DECLARED = ("label", "family", "owns_weights", "cosine_head")


@dataclass(frozen=True)
class LossInfo:
    name: str           # the run parameter ``loss``
    label: str          # display name
    family: str         # the survey's family and sub-family (``taxonomy``)
    owns_weights: bool  # its weights are the method: not DRW-eligible
    cosine_head: bool   # built for a normalised (cosine) classifier


def loss_info(source: Path | str = LOSSES_SOURCE) -> dict[str, LossInfo]:
    """``{name: LossInfo}`` of every loss in ``LOSSES``' order (the tables' row order)."""
    return _read(str(source), Path(source).stat().st_mtime_ns)


def loss_labels(source: Path | str = LOSSES_SOURCE) -> dict[str, str]:
    """``{name: display name}`` of every loss, in ``LOSSES``' order."""
    return {name: info.label for name, info in loss_info(source).items()}


def drw_eligible_losses(source: Path | str = LOSSES_SOURCE) -> list[str]:
    """The losses deferred re-weighting may re-weight (their weights are not the method)."""
    return [name for name, info in loss_info(source).items() if not info.owns_weights]


@functools.cache
def _read(source: str, _mtime: int) -> dict[str, LossInfo]:
    tree = ast.parse(Path(source).read_text(), source)
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    table = next(n.value for n in tree.body if isinstance(n, ast.AnnAssign | ast.Assign)
                 and _target(n) == "LOSSES")
    out = {}
    for key, value in zip(table.keys, table.values, strict=True):
        name, cls = ast.literal_eval(key), value.id
        out[name] = LossInfo(name, *(_attribute(classes, cls, attr) for attr in DECLARED))
    return out


def _target(node) -> str | None:
    target = node.target if isinstance(node, ast.AnnAssign) else node.targets[0]
    return target.id if isinstance(target, ast.Name) else None


def _attribute(classes: dict, cls: str, attr: str):
    """``cls.attr`` as the class body states it, else as its first base's (within losses.py)."""
    while cls in classes:
        node = classes[cls]
        for stmt in node.body:
            if isinstance(stmt, ast.Assign | ast.AnnAssign) and _target(stmt) == attr and stmt.value is not None:
                return _value(stmt.value)
        cls = node.bases[0].id if node.bases and isinstance(node.bases[0], ast.Name) else None
    raise ValueError(f"losses.py: no class declares {attr!r} (the base class declares every one of {DECLARED})")


def _value(node):
    """A literal, or a name of ``taxonomy`` (``taxonomy.RE_WEIGHTING``)."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "taxonomy":
        return getattr(taxonomy, node.attr)
    return ast.literal_eval(node)
