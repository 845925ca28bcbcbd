"""The report's figures and their files: readable axes, confusion matrices that show where the
wrong predictions went, figures with alternative text and links to their files."""
import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from longtail import figures, predictions, report, tables  # noqa: E402


def _tick_texts(ax, axis="x"):
    ax.figure.canvas.draw()
    labels = ax.get_xticklabels() if axis == "x" else ax.get_yticklabels()
    return [t.get_text() for t in labels if t.get_text()]


def test_per_class_plot_writes_small_counts_plainly():
    per_class = pd.DataFrame({"train_set": "longtailed", "method": "CE", "train_count": [1, 2, 4, 8, 1, 2, 4, 8],
                              "acc1": [10, 20, 40, 80, 0, 30, 50, 90]})
    fig = figures.per_class_vs_count(per_class, ["CE"])
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert _tick_texts(ax) == ["1", "2", "4", "8"]  # not 10^0, 2x10^0


def test_image_size_plot_of_constant_sizes_is_one_bar_at_the_size():
    sizes = pd.DataFrame({"split": ["train"] * 5 + ["test"] * 3, "width": 256, "height": 256})
    fig = figures.image_sizes(sizes)
    ax = fig.axes[1]
    assert _tick_texts(ax) == ["256"]
    assert [p.get_height() for p in ax.patches] == [8]
    assert "all 8 images 256 px" in ax.get_title()


def _fake_predictions(monkeypatch, n_classes=30, per_class=4):
    """Pooled predictions where class c is predicted as c, except that the three smallest classes'
    images all go to class 5 (a head class outside the tail panel's columns)."""
    names = [f"Genus{c:02d} speciesname{c:02d}" for c in range(n_classes)]
    counts = np.arange(n_classes, 0, -1)  # class 0 largest ... class 29 smallest
    labels = np.repeat(np.arange(n_classes), per_class)
    pred = labels.copy()
    pred[np.isin(labels, [27, 28, 29])] = 5
    pred[np.flatnonzero(labels == 26)[:1]] = 12  # one more wrong prediction, to class 12
    logits = np.full((len(labels), n_classes), -5.0)
    logits[np.arange(len(labels)), pred] = 5.0
    classes = pd.DataFrame({"class": np.arange(n_classes), "name": names, "train_count": counts})
    monkeypatch.setattr(predictions, "pooled_predictions",
                        lambda runs: {"classes": classes, "logits": logits, "labels": labels})
    return names


def test_tail_confusion_panel_shows_the_columns_the_wrong_predictions_went_to(monkeypatch):
    names = _fake_predictions(monkeypatch)
    runs = pd.DataFrame({"method": ["CE"]})
    panels = predictions.confusion_subsets(runs, ["CE"], k=4, extra_columns=1)
    (t_large, m_large, rows_large, cols_large), (t_tail, m_tail, rows_tail, cols_tail) = panels
    assert rows_tail == names[26:30] and cols_tail == names[26:30] + [names[5], "other classes"]
    # every row sums to the class's 4 test images: nothing is hidden outside the shown columns
    assert m_tail.sum(axis=1).tolist() == [4, 4, 4, 4]
    assert m_tail[:, -2].tolist() == [0, 4, 4, 4]  # to class 5
    assert m_tail[:, -1].tolist() == [1, 0, 0, 0]  # to class 12, beyond extra_columns=1: "other classes"
    assert np.diag(m_tail[:, :4]).tolist() == [3, 0, 0, 0]
    assert cols_large == rows_large == names[:4] and np.array_equal(m_large, 4 * np.eye(4))  # no extra column


def test_confusion_figure_has_a_colour_bar_and_whole_words(monkeypatch):
    _fake_predictions(monkeypatch)
    panels = predictions.confusion_subsets(pd.DataFrame({"method": ["CE"]}), ["CE"], k=4)
    fig = figures.confusion_panels(panels)
    heatmaps = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == len(heatmaps) == len(panels) and all("% of the true class" in b.get_ylabel() for b in bars)
    words = {w for p in panels for n in p[2] + p[3] for w in n.split()}
    for ax in heatmaps:
        for text in _tick_texts(ax, "x") + _tick_texts(ax, "y"):
            assert set(text.split()) <= words, text  # wrapped at spaces, never mid-word
        assert min(t.get_fontsize() for t in ax.get_xticklabels()) >= 8


def test_show_figure_saves_links_and_describes_the_figure(tmp_path, monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda *objs: shown.extend(objs))
    fig = figures.per_class_vs_count(pd.DataFrame({"train_set": "longtailed", "method": "CE", "train_count": [1, 8],
                                                   "acc1": [0, 100]}), ["CE"], title="EU Moths")
    report.show_figure(fig, tmp_path, "per_class_x")
    image, links = shown
    assert image._repr_png_()[1]["alt"] == ("EU Moths: top-1 accuracy of the class (%) against training images of the "
                                     "class (long-tailed training set)")
    assert (tmp_path / "figures" / "per_class_x.pdf").exists() and (tmp_path / "figures" / "per_class_x.png").exists()
    assert '<a href="figures/per_class_x.pdf">PDF</a>' in links.data
    assert '<a href="figures/per_class_x.png">PNG</a>' in links.data


def test_show_table_caption_links_its_files(tmp_path):
    frame = pd.DataFrame({"top-1 (%)": [80.0, 20.0]}, index=pd.Index(["head", "tail"], name="group"))
    html = report.show_table(frame, tmp_path, "groups_x", "Top-1 per group").to_html()
    assert "Top-1 per group" in html
    assert '<a href="tables/groups_x.tex">LaTeX</a>' in html and '<a href="tables/groups_x.csv">CSV</a>' in html
    assert (tmp_path / "tables" / "groups_x.tex").exists()


def test_run_metrics_table_is_in_percent():
    metrics = {"balanced/acc1": 0.5, "balanced/balanced_acc": 0.5, "balanced/macro_f1": 0.25, "balanced/ece": 0.1,
               "balanced/loss": 1.5, "balanced/n": 40, "tail/acc1": 0.125, "tail/n": 8}
    t = tables.run_metrics_table(metrics)
    assert list(t.index) == ["Balanced", "Tail"]
    assert t.loc["Balanced", "top-1 (%)"] == 50 and t.loc["Balanced", "macro F1 (%)"] == 25
    assert t.loc["Balanced", "ECE (%)"] == pytest.approx(10) and t.loc["Balanced", "loss"] == 1.5
    assert t.loc["Tail", "top-1 (%)"] == 12.5 and pd.isna(t.loc["Tail", "loss"])


def test_split_accuracy_bars_have_readable_split_names():
    table = tables.run_metrics_table({f"{s}/acc1": v for s, v in (("balanced", 0.6), ("longtailed", 0.7),
                                                                     ("longtailed_sampled", 0.65), ("head", 0.8),
                                                                     ("middle", 0.7), ("tail", 0.3))})
    fig = figures.split_accuracy(table, title="ce")
    ax = fig.axes[0]
    assert [round(p.get_height(), 6) for p in ax.patches] == [60, 70, 65, 80, 70, 30]
    assert "Long-tailed\n(sampled)" in _tick_texts(ax)
    assert ax.patches[5].get_facecolor()[:3] == pytest.approx(matplotlib.colors.to_rgb(figures.GROUP_COLORS["tail"]))


def test_learning_curves_plot_what_the_history_has():
    hist = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [2.0, 1.0, 0.5], "train_acc": [0.2, 0.5, 0.8]})
    fig = figures.learning_curves(hist)
    loss_ax, acc_ax = fig.axes
    assert [line.get_label() for line in loss_ax.get_lines()] == ["train_loss"]
    assert list(acc_ax.get_lines()[0].get_ydata()) == [0.2, 0.5, 0.8]
