"""The report's figures (matplotlib / seaborn); each function returns a ``Figure`` and computes
nothing beyond what it plots (the numbers come from ``longtail.results`` and ``longtail.datasummary``).

Head / middle / tail have one colour throughout (``GROUP_COLORS``).  seaborn (with the SciPy it
imports, ~0.6 s) is imported by the functions that draw with it, so the one-run figures of
``notebooks/train.py`` (plain matplotlib) leave it out of every training kernel.
"""
from __future__ import annotations

import textwrap

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .leaderboard import pareto_front
from .results import TRAIN_SET_LABELS
from .subsets import GROUP_NAMES as GROUPS

GROUP_COLORS = {"head": "#4C72B0", "middle": "#DD8452", "tail": "#C44E52"}
TRAIN_SET_COLORS = {"balanced": "#55A868", "longtailed": "#8172B3"}


def setup() -> None:
    """The report's look: seaborn's white grid, compact fonts, PNG output at a readable size."""
    import seaborn as sns
    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.9)
    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 150, "axes.titlesize": "medium",
                         "figure.max_open_warning": 0})


def _wrap(labels, width: int = 14) -> list[str]:
    """Labels wrapped at spaces only: a species name is never broken mid-word."""
    import textwrap
    return ["\n".join(textwrap.wrap(str(s), width, break_long_words=False, break_on_hyphens=False)) or str(s)
            for s in labels]


def _plain_log_ticks(axis, values) -> None:
    """Plain numbers (1, 2, 4, 8, not 10⁰, 2×10⁰) on a log axis: ticks at the data's own values
    when there are few of them, else matplotlib's positions written plainly."""
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    values = np.unique(np.asarray(values, dtype=float))
    if len(values) <= 12:
        axis.set_major_locator(matplotlib.ticker.FixedLocator(values))
        axis.set_minor_locator(matplotlib.ticker.NullLocator())
    else:
        axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axis.set_major_formatter(plain)


# ------------------------------------------------------------------------------------ data set

def class_distribution(classes: pd.DataFrame, log: bool = True, title: str | None = None):
    """Training images per class of the long-tailed and balanced sets, classes sorted by their
    long-tailed count, the head / middle / tail spans shaded."""
    c = classes.sort_values(["longtailed", "class"], ascending=[False, True], kind="stable").reset_index(drop=True)
    x = np.arange(len(c))
    fig, ax = plt.subplots(figsize=(10, 3.6))
    for g in GROUPS:
        pos = np.flatnonzero(c["group"].to_numpy() == g)
        if len(pos):
            ax.axvspan(pos.min() - 0.5, pos.max() + 0.5, color=GROUP_COLORS[g], alpha=0.12, lw=0)
            ax.text((pos.min() + pos.max()) / 2, 1.0, f"{g} ({len(pos)})", transform=ax.get_xaxis_transform(),
                    ha="center", va="bottom", color=GROUP_COLORS[g], fontsize="small", fontweight="bold")
    width = 1.0 if len(c) > 40 else 0.8
    ax.bar(x, c["longtailed"], width=width, color=[GROUP_COLORS[g] for g in c["group"]], label="long-tailed")
    ax.step(np.r_[x - 0.5, x[-1] + 0.5], np.r_[c["balanced"], c["balanced"].iloc[-1]], where="post",
            color=TRAIN_SET_COLORS["balanced"], lw=1.8, label="balanced")
    if log:
        ax.set_yscale("log")
        plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain if c["longtailed"].max() / max(c["longtailed"].min(), 1) < 30
                                     else matplotlib.ticker.NullFormatter())
    ax.set_xlim(-0.5, len(c) - 0.5)
    ax.set_xlabel("class (sorted by long-tailed training count)")
    ax.set_ylabel("training images" + (" (log scale)" if log else ""))
    if len(c) <= 12:
        ax.set_xticks(x, _wrap(c["name"], 14), rotation=30, ha="right", fontsize="small")
    elif len(c) <= 30:
        ax.set_xticks(x, _wrap(c["name"], 10), rotation=90, fontsize="x-small")
    else:
        ax.set_xticks([])
    ax.legend(loc="upper right", frameon=True)
    if title:
        ax.set_title(title, pad=16)
    fig.tight_layout()
    return fig


def test_counts(classes: pd.DataFrame):
    """Test images per class: the balanced test set and the sampled long-tailed one (bars), and the
    effective images of the weighted long-tailed split (line), classes in the same order."""
    c = classes.sort_values(["longtailed", "class"], ascending=[False, True], kind="stable").reset_index(drop=True)
    x = np.arange(len(c))
    fig, ax = plt.subplots(figsize=(10, 3.0))
    ax.bar(x, c["test_balanced"], width=0.9, color="#BBBBBB", label="balanced test")
    ax.bar(x, c["test_longtailed_sampled"], width=0.9, color=[GROUP_COLORS[g] for g in c["group"]],
           label="long-tailed test (sampled)")
    ax.plot(x, c["test_longtailed_weighted"], color="black", lw=1.2, label="long-tailed test (weighted, Σw)")
    ax.set_xlim(-0.5, len(c) - 0.5)
    if len(c) <= 12:
        ax.set_xticks(x, _wrap(c["name"], 14), rotation=30, ha="right", fontsize="small")
    else:
        ax.set_xticks([] if len(c) > 30 else x, [] if len(c) > 30 else _wrap(c["name"], 10), rotation=90,
                      fontsize="x-small")
    ax.set_xlabel("class (sorted by long-tailed training count)")
    ax.set_ylabel("test images")
    ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    return fig


def image_grid(images, titles, colors=None, ncols: int = 6, size: float = 1.7, suptitle: str | None = None):
    """Images in a grid, a (wrapped) title above each, in ``colors`` when given."""
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, int(np.ceil(n / ncols)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size, nrows * (size + 0.45)), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i])
            ax.set_title("\n".join(_wrap([titles[i]], 22)), fontsize="x-small",
                         color=(colors[i] if colors is not None else "black"))
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def sample_grid(images, table: pd.DataFrame, ncols: int = 6):
    """``datasummary.sample_images``: one row of images per group."""
    titles = [f"{r['group']}: {r['name']} ({r['train_count']})" for _, r in table.iterrows()]
    return image_grid(images, titles, [GROUP_COLORS[g] for g in table["group"]], ncols=ncols)


def image_sizes(sizes: pd.DataFrame):
    """Width against height of the original images (one point per image), and the histogram of
    the shorter side."""
    import seaborn as sns
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    sns.scatterplot(data=sizes, x="width", y="height", hue="split", s=12, alpha=0.5, ax=axes[0], linewidth=0)
    axes[0].set_title("original image size (px)")
    short = pd.Series(np.minimum(sizes["width"], sizes["height"]))
    if short.nunique() <= 12:  # a few sizes (often one): a bar per size, not a histogram around it
        counts = short.value_counts().sort_index()
        axes[1].bar([f"{v:g}" for v in counts.index], counts.to_numpy(), color="#4C72B0", width=0.6)
        axes[1].set_ylabel("images")
    else:
        sns.histplot(x=short, bins=40, ax=axes[1], color="#4C72B0")
    axes[1].set_xlabel("shorter side (px)")
    axes[1].set_title("shorter side" + (f": all {len(short):,} images {short.iloc[0]:g} px" if short.nunique() == 1 else ""))
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------ one run

def learning_curves(history: pd.DataFrame):
    """A run's ``history.csv``: training (and validation) loss and accuracy against the epoch."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    for ax, (title, cols) in zip(axes, (("loss", ("train_loss", "val_loss")),
                                        ("accuracy", ("train_acc", "val_acc", "val_balanced_acc")))):
        present = [c for c in cols if c in history]
        if present:
            history.plot(x="epoch", y=present, ax=ax, title=title)
        ax.set_xlabel("epoch")
    fig.tight_layout()
    return fig


def split_accuracy(table: pd.DataFrame, title: str | None = None):
    """Top-1 (%) per test split and class group of one run (``tables.run_metrics_table``), the
    groups in their colours."""
    acc = table["top-1 (%)"].astype(float)
    colors = [GROUP_COLORS.get(str(name).lower(), "#8C8C8C") for name in acc.index]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.bar(range(len(acc)), acc.to_numpy(), color=colors)
    ax.set_xticks(range(len(acc)), _wrap(acc.index, 12), fontsize="small")
    ax.set_ylim(0, 100)
    ax.set_xlabel("test split")
    ax.set_ylabel("top-1 accuracy (%)")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------ results

def group_accuracy(runs: pd.DataFrame, methods: list[str], title: str | None = None):
    """Grouped bars: head / middle / tail top-1 (%) per loss, a panel per training set; error bars:
    the standard deviation over seeds."""
    import seaborn as sns
    long = runs.melt(id_vars=["method", "train_set"], value_vars=[f"{g}/acc1" for g in GROUPS],
                     var_name="group", value_name="acc1")
    long["group"] = long["group"].str.split("/").str[0]
    long["acc1"] = long["acc1"] * 100
    sets = [s for s in ("balanced", "longtailed") if s in set(long["train_set"])]
    fig, axes = plt.subplots(1, len(sets), figsize=(max(6, 0.9 * len(methods) * len(sets) + 2), 3.8),
                             squeeze=False, sharey=True)
    for ax, s in zip(axes.flat, sets):
        sns.barplot(data=long[long["train_set"] == s], x="method", y="acc1", hue="group", order=methods,
                    hue_order=list(GROUPS), palette=GROUP_COLORS, errorbar="sd", ax=ax, err_kws={"linewidth": 1})
        ax.set_title(f"{TRAIN_SET_LABELS[s]} training set")
        ax.set_xlabel("")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_xticks(range(len(methods)), _wrap(methods, 13), fontsize="small")
        ax.set_ylim(0, 100)
        if ax is not axes.flat[-1]:
            ax.get_legend().remove()
    axes.flat[-1].legend(title="class group", loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def per_class_vs_count(per_class: pd.DataFrame, methods: list[str], title: str | None = None):
    """Per-class top-1 (%) against the class's training images (long-tailed training set): the
    mean over the classes of one size and the seeds, a line per loss."""
    import seaborn as sns
    d = per_class[per_class["train_set"] == "longtailed"]
    fig, ax = plt.subplots(figsize=(8, 4))
    if not len(d):
        ax.text(0.5, 0.5, "no run on the long-tailed training set", ha="center", transform=ax.transAxes)
        return fig
    palette = dict(zip(methods, sns.color_palette("tab10", len(methods))))
    sns.lineplot(data=d, x="train_count", y="acc1", hue="method", hue_order=methods, palette=palette,
                 errorbar=None, marker="o", markersize=4, ax=ax)
    if d["train_count"].max() / max(d["train_count"].min(), 1) >= 8:
        ax.set_xscale("log")
        _plain_log_ticks(ax.xaxis, d["train_count"])
    ax.set_xlabel("training images of the class (long-tailed training set)")
    ax.set_ylabel("top-1 accuracy of the class (%)")
    ax.set_ylim(-2, 102)
    ax.legend(title="loss", fontsize="small", ncols=2 if len(methods) > 4 else 1)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def balanced_vs_longtailed(runs: pd.DataFrame, methods: list[str], title: str | None = None):
    """Per loss: balanced-test and tail top-1 (%) after training on the balanced and on the
    long-tailed set (bars: mean, error bars: standard deviation over seeds)."""
    import seaborn as sns
    long = runs.melt(id_vars=["method", "train_set"], value_vars=["balanced/acc1", "tail/acc1"],
                     var_name="split", value_name="acc1")
    long["acc1"] *= 100
    sets = [s for s in ("balanced", "longtailed") if s in set(long["train_set"])]
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.0 * len(methods) * 2 + 2), 3.8), sharey=True)
    for ax, (split, name) in zip(axes, (("balanced/acc1", "balanced test set"), ("tail/acc1", "tail classes"))):
        sns.barplot(data=long[long["split"] == split], x="method", y="acc1", hue="train_set", order=methods,
                    hue_order=sets, palette=TRAIN_SET_COLORS, errorbar="sd", ax=ax, err_kws={"linewidth": 1})
        ax.set_title(name)
        ax.set_xlabel("")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_xticks(range(len(methods)), _wrap(methods, 13), fontsize="small")
        ax.set_ylim(0, 100)
        handles, _ = ax.get_legend_handles_labels()
        ax.get_legend().remove()
    axes[-1].legend(handles, [f"{TRAIN_SET_LABELS[s]} training set" for s in sets], fontsize="small",
                    loc="upper left", bbox_to_anchor=(1.01, 1))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def confusion_panels(panels: list[tuple], ncols: int = 1):
    """Confusion matrices (true class in rows), one panel per ``(title, counts, row names[, column
    names])`` (``predictions.confusion_subsets``): cells in % of the true class's test images (the row
    sum of ``counts``, which includes an "other classes" column when the columns are a selection),
    values written in the cells, a colour bar beside each panel; names wrapped at spaces."""
    import seaborn as sns
    n = len(panels)
    ncols = min(ncols, n)
    nrows = int(np.ceil(n / ncols))
    rows = max(p[1].shape[0] for p in panels)
    cols = max(p[1].shape[1] for p in panels)
    cell = 0.36  # inches per cell: 8 pt names and values stay readable
    width = min(16.0, cols * cell + 3.2) * ncols
    height = (rows * cell + 2.4) * nrows
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False, layout="constrained")
    for ax, panel in zip(axes.flat, panels):
        title, m = panel[0], np.asarray(panel[1], dtype=float)
        row_names = panel[2]
        col_names = panel[3] if len(panel) > 3 else panel[2]
        with np.errstate(invalid="ignore", divide="ignore"):
            pct = 100 * m / m.sum(axis=1, keepdims=True)
        labels = np.where(np.nan_to_num(pct) >= 0.5, np.vectorize(lambda v: f"{v:.0f}")(np.nan_to_num(pct)), "")
        sns.heatmap(pct, ax=ax, vmin=0, vmax=100, cmap="Blues", square=False, cbar=False, annot=labels, fmt="",
                    annot_kws={"fontsize": 7}, linewidths=0.3, linecolor="#eeeeee",
                    xticklabels=_wrap(col_names, 18), yticklabels=_wrap(row_names, 28))
        fig.colorbar(ax.collections[0], ax=ax, shrink=0.9, pad=0.01, aspect=25,
                     label="% of the true class's\ntest images")
        ax.set_title(title, fontsize="medium", loc="left")
        ax.grid(False)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.tick_params(axis="x", labelsize=8, labelrotation=90)
        ax.tick_params(axis="y", labelsize=8, labelrotation=0)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    return fig


def reliability(bins: dict[str, pd.DataFrame], ece: dict[str, float], ncols: int = 4):
    """Reliability diagrams (``metrics.reliability_bins``), one panel per loss: the accuracy of each
    confidence bin against its confidence, the diagonal is perfect calibration; the bar shading
    shows the share of test images in the bin; ECE in the title."""
    n = len(bins)
    ncols = min(ncols, n)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.9 * ncols, 2.9 * nrows), squeeze=False, sharex=True,
                             sharey=True)
    for ax, (name, b) in zip(axes.flat, bins.items()):
        width = (b["upper"] - b["lower"]).to_numpy()
        mass = b["mass"].fillna(0).to_numpy()
        ax.bar(b["lower"], b["accuracy"].fillna(0), width=width, align="edge", edgecolor="white",
               color=plt.cm.Blues(0.35 + 0.65 * mass / max(mass.max(), 1e-12)))
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
        ax.set_title(f"{name}\nECE {100 * ece[name]:.1f} %", fontsize="small")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def examples(table: pd.DataFrame, images, ncols: int = 6):
    """Tail-class test images, correct (green) and wrong (red) predictions, true and predicted name."""
    titles = [f"true: {r['true']}" + ("" if r["correct"] else f"\npred: {r['predicted']}")
              for _, r in table.iterrows()]
    colors = ["#2E7D32" if c else "#C62828" for c in table["correct"]]
    return image_grid(images, titles, colors, ncols=ncols, size=1.9)


# ------------------------------------------------------------------------------------ leaderboard

def tail_vs_head(board: pd.DataFrame, goal_tail: float, title: str | None = None):
    """Tail against head top-1 (%) of every leaderboard method (``leaderboard.leaderboard``), error
    bars the standard deviation over seeds; the Pareto front joined by a line and labelled; the
    tail goal a dashed line."""
    fig, ax = plt.subplots(figsize=(8, 5.5))
    front = board[board["front"]].sort_values("head_mean")
    ax.errorbar(board["head_mean"], board["tail_mean"], xerr=board["head_sd"].fillna(0),
                yerr=board["tail_sd"].fillna(0), fmt="none", ecolor="0.75", elinewidth=0.8, zorder=1)
    ax.scatter(board["head_mean"], board["tail_mean"], c=np.where(board["front"], GROUP_COLORS["tail"], "0.45"),
               s=30, zorder=2)
    ax.plot(front["head_mean"], front["tail_mean"], color=GROUP_COLORS["tail"], lw=1, zorder=2,
            label="front (no method better on both)")
    for _, r in board.iterrows():
        if r["front"] or r["Rank"] <= 3:
            ax.annotate(f"{r['Rank']}. {r['Method']}", (r["head_mean"], r["tail_mean"]), xytext=(4, 3),
                        textcoords="offset points", fontsize="x-small")
    ax.axhline(goal_tail, ls="--", color="0.3", lw=1, label=f"goal: tail {goal_tail:.0f} %")
    ax.set_xlabel("head top-1 (%)")
    ax.set_ylabel("tail top-1 (%)")
    ax.set_ylim(min(board["tail_mean"].min() - 5, goal_tail - 10), max(board["tail_mean"].max(), goal_tail) + 5)
    ax.legend(fontsize="small", loc="lower left")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def balanced_vs_tail(board: pd.DataFrame, goal: dict, title: str | None = None):
    """Tail against balanced-test top-1 (%) of every leaderboard method, error bars the seeds'
    standard deviation, with both goal lines (``goal``: fractions, ``leaderboard.GOAL``; the goal is
    the upper right corner they cut off), the front of this plane joined, the entry chosen on
    validation (rank 1) ringed."""
    fig, ax = plt.subplots(figsize=(8, 7))
    on_front = pareto_front(board["balanced_mean"].to_numpy(), board["tail_mean"].to_numpy())
    front = board[on_front].sort_values("balanced_mean")
    ax.errorbar(board["balanced_mean"], board["tail_mean"], xerr=board["balanced_sd"].fillna(0),
                yerr=board["tail_sd"].fillna(0), fmt="none", ecolor="0.75", elinewidth=0.8, zorder=1)
    ax.scatter(board["balanced_mean"], board["tail_mean"], c=np.where(on_front, GROUP_COLORS["tail"], "0.45"),
               s=30, zorder=2)
    ax.plot(front["balanced_mean"], front["tail_mean"], color=GROUP_COLORS["tail"], lw=1, zorder=2,
            label="front (no method better on both)")
    top = board[board["Rank"] == 1]
    ax.scatter(top["balanced_mean"], top["tail_mean"], s=160, facecolors="none", edgecolors="k", zorder=3,
               label="chosen on validation")
    key = []  # the labelled points' names, below the axes (the names are too long to sit beside them)
    for i, (_, r) in enumerate(board.iterrows()):
        if on_front[i] or r["Rank"] <= 3:
            ax.annotate(str(r["Rank"]), (r["balanced_mean"], r["tail_mean"]), xytext=(4, 3),
                        textcoords="offset points", fontsize="small")
            key.append(textwrap.fill(f"{r['Rank']}. {r['Method']}", 120, subsequent_indent="    "))
    g_bal, g_tail = 100 * goal["balanced"], 100 * goal["tail"]
    ax.axvline(g_bal, ls="--", color="0.3", lw=1, label=f"goal: balanced {g_bal:.0f} %")
    ax.axhline(g_tail, ls=":", color="0.3", lw=1, label=f"goal: tail {g_tail:.0f} %")
    ax.set_xlabel("balanced-test top-1 (%)")
    ax.set_ylabel("tail top-1 (%)")
    ax.set_xlim(min(board["balanced_mean"].min(), g_bal) - 3, max(board["balanced_mean"].max(), g_bal) + 3)
    ax.set_ylim(min(board["tail_mean"].min(), g_tail) - 5, max(board["tail_mean"].max(), g_tail) + 5)
    ax.legend(fontsize="small", loc="upper left")
    if title:
        ax.set_title(title)
    fig.text(0.02, 0.01, "\n".join(key), fontsize="x-small", va="bottom", ha="left")
    fig.tight_layout(rect=(0, 0.04 + 0.025 * sum(k.count("\n") + 1 for k in key), 1, 1))
    return fig
