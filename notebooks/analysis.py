# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python (longtail)
#     language: python
#     name: longtail
# ---

# %% [markdown]
# # Results: which loss helps the tail, and at what cost
#
# Every finished run of the grids below, in the layout of the thesis's appendix: for each backbone
# and training set a top-1 table (test splits and class groups, a row per loss) and a loss / top-1 /
# F1 table per split; then figures, published numbers for the same protocol where they exist, and
# a summary of what helps the tail.  With several seeds a cell is the mean ± standard deviation.
# Tables are written to `tables/` (LaTeX and CSV), figures to `figures/` (PDF and PNG), for `\input`
# and `\includegraphics` in the thesis.  All computation is in `longtail.results`, the plots in
# `longtail.figures`, the files in `longtail.report`.

# %% tags=["parameters"]
grids = ['params/default.yaml']  # parameter files (YAML) or folders of run folders
out_dir = 'report'  # tables/ and figures/ are written below it
baseline = 'CE'  # the loss the others are compared with
confusion_classes = 12  # classes per confusion-matrix panel (largest and smallest)
examples_per_kind = 6  # tail-class test images shown, correct and wrong each

# %%
from pathlib import Path

from IPython.display import Markdown, display

from longtail import figures, predictions, report, results, rundir, tables, thesis

figures.setup()
out_dir = results.project_path(out_dir)
all_runs = results.collect_runs(grids)
print(f"{len(all_runs)} finished runs from {', '.join(map(str, grids))}"
      + (f"; {len(all_runs.attrs['unfinished'])} without results" if all_runs.attrs["unfinished"] else ""))
tables.save_runs(all_runs, out_dir)
# the class-balanced ablation has a section of its own, not rows in the appendix tables
runs = all_runs[all_runs["grid"] != thesis.ABLATION_GRID] if len(all_runs) else all_runs
if len(runs):
    runs = runs.assign(method=results.method_labels(runs))
# runs restored from an archive (`longtail.archive`) keep their metrics but not their test predictions:
# the sections that read predictions (leaderboard ensemble, per class, confusion, calibration, examples)
# use the runs that have them
predicted = runs[[(Path(d) / rundir.PREDICTIONS_FILE).exists() for d in runs["run_dir"]]] if len(runs) else runs
if len(predicted) < len(runs):
    print(f"{len(runs) - len(predicted)} runs without predictions (restored from an archive): in the tables, "
          "not in the leaderboard, per-class, confusion, calibration or example figures")

# %% [markdown]
# ## What helps the tail, at what cost to the head
#
# For the long-tailed training set: each loss's top-1 on the tail classes, the head classes and the
# balanced test set, and its change against the baseline in percentage points (pp), best tail gain
# first.

# %%
tradeoff = tables.tail_tradeoff(runs, baseline)
display(Markdown(tables.tail_summary(tradeoff, baseline).replace("\n", "\n\n")))
if len(tradeoff):
    display(report.show_table(tradeoff.set_index(["Setting", "Loss"]), out_dir, "tail_tradeoff",
                              f"Tail gain and head cost against {baseline} (long-tailed training set)"))

# %% [markdown]
# ## The long-tailed leaderboard
#
# Every method trained on the long-tailed set (`params/techniques.yaml`: the survey's families
# beyond the thesis's losses), ranked by the balanced validation score that tuned it (unused
# training-fold images; the test fold chooses nothing, the top row included): top-1 on the balanced
# test set, its tail and head classes (mean ± standard deviation over the seeds, and in brackets the
# 95 % bootstrap interval over the test images, the test fold's own sampling error), its family in
# the survey's taxonomy and the CPU seconds of one run (training and evaluation).  The ensemble averages the softmax of two or three of the
# five methods with the best validation score, the members whose ensemble scores best on validation.
# ● marks the tail/head front, ✓ the goal.  The second figure sets balanced against tail top-1 with
# both goal lines: the goal is the corner to their upper right.

# %%
from longtail import leaderboard

board = leaderboard.leaderboard(predicted)
display(Markdown(leaderboard.goal_text(board, predicted).replace("\n", "\n\n")))
for setting, b in (board.groupby("Setting", sort=False) if len(board) else []):
    display(report.show_table(leaderboard.table(b), out_dir, "leaderboard" if board["Setting"].nunique() == 1
                              else f"leaderboard_{b.index[0]}",
                              f"Leaderboard, long-tailed training set: {setting}. {leaderboard.TABLE_NOTE}"))
    report.show_figure_of(figures.tail_vs_head, b, leaderboard.GOAL["tail"] * 100, title=setting, out_dir=out_dir,
                          name="tail_vs_head" if board["Setting"].nunique() == 1 else f"tail_vs_head_{b.index[0]}")
    report.show_figure_of(figures.balanced_vs_tail, b.reset_index(drop=True), leaderboard.GOAL, title=setting,
                          out_dir=out_dir, name="balanced_vs_tail" if board["Setting"].nunique() == 1
                          else f"balanced_vs_tail_{b.index[0]}")

# %% [markdown]
# ## Tables (the thesis's appendix layout)

# %%
for table in tables.appendix_tables(runs):
    display(report.show_table(table, out_dir))
    for note in table.notes:
        display(Markdown(f"*Note:* {note}"))

# %% [markdown]
# ## Against the thesis
#
# The thesis's published top-1 (Appendix A) beside ours, for every thesis table whose backbone,
# training set and loss these runs have (ours under the thesis's evaluation protocol: a physical
# long-tailed test set that head / middle / tail partition).  **Different data** (the thesis's own
# moth photographs against EU Moths here) and, on a CPU, a linear probe instead of fine-tuning: the
# *pattern* across losses can be compared, not the level.  The last column names the thesis row's
# known defect, found in its numbers.  Then the thesis's grid fine-tuned end to end on a lent GPU with
# `params/thesis.yaml`'s schedule, which is our choice (the thesis states no epochs, learning rate,
# optimiser or pretraining; MobileNetV2, `bench/measured/thesis_finetune_*`), and our readings of the
# thesis's tables (what its numbers show), each with the thesis's value for every backbone, ours (mean
# ± standard error over the seeds) and a verdict that holds only where our difference exceeds its
# standard error.  Each setting of ours (a linear probe, a fine-tuned run, another schedule) is its own
# row: runs of different settings are never averaged.

# %%
beside = thesis.side_by_side(runs)
if len(beside):
    display(report.show_table(beside, out_dir, "thesis_side_by_side",
                              "Top-1 (%): the thesis (its data) and ours (our data; the thesis's evaluation "
                              "protocol), side by side"))
else:
    print("No run has a thesis backbone (mobilenetv2, resnet50v2, vit_b16, convnext_base) with a thesis loss.")
found = thesis.findings(runs)
if len(found):
    display(report.show_table(found.set_index(["Reading of the thesis's tables", "Backbone", "Setting"]), out_dir,
                              "thesis_findings", "Our readings of the thesis's tables against our runs (verdicts "
                              "computed from the numbers; each setting on its own)"))
for name, text in report.benchmark_tables():  # params/thesis.yaml (our schedule) fine-tuned on a lent GPU
    if name.startswith(report.THESIS_FINETUNE_PREFIX):
        display(Markdown(f"### `bench/measured/{name}`\n\n{text}"))
defects = thesis.known_defects()
display(Markdown("Known defects of the thesis's tables (found in its numbers): " + "; ".join(
    f"{bb}, {ts} training set, {thesis.THESIS_LOSS_NAMES[loss]}: {text}" for (bb, ts, loss), text in defects.items()) + "."))

# %% [markdown]
# ## The class-balanced loss examined
#
# `params/class_balanced.yaml`: β × base (softmax, sigmoid, focal) × reduction (Cui et al.'s sum / N,
# or the weighted mean sum / Σw), and implementation slips that could explain the thesis's collapse
# (unnormalised weights, weights in another class order than the labels).  A setting *collapses*
# when its balanced-test top-1 is below 5 %; *thesis-like* when it is below half of Softmax's with
# the head below the tail, as in the thesis.

# %%
ablation = thesis.class_balanced_ablation(all_runs)
display(Markdown(thesis.ablation_summary(ablation).replace("\n", "\n\n")))
if len(ablation):
    display(report.show_table(ablation.set_index(["beta", "base", "reduction", "slip"]), out_dir,
                              "class_balanced_ablation", "Class-balanced variants on the long-tailed training set "
                              "(top-1 %, mean over seeds)"))

# %% [markdown]
# ## Published numbers for the same protocol
#
# CIFAR-10-LT with a ResNet-32 trained from scratch (`params/cifar10_lt.yaml`) against the numbers
# its papers report; the source of each number is in its row.

# %%
published = tables.published_comparison(runs)
if len(published):
    display(report.show_table(published.set_index(["Imbalance factor", "Method"]), out_dir, "published",
                              "Top-1 (%) on the balanced CIFAR-10 test set: published and ours"))
    for source, ref in tables.PUBLISHED_REFERENCES.items():
        display(Markdown(f"*{source}*: {ref}"))
else:
    print("No run here matches a published protocol (CIFAR-10-LT, ResNet-32 from scratch, long-tailed training set);\n"
          "run params/cifar10_lt.yaml (on a GPU) to compare with Cao et al. 2019.  Measured on a lent GPU:")
for name, text in report.benchmark_tables():
    if name.startswith(report.PUBLISHED_ABLATION_PREFIX):
        display(Markdown(f"### `bench/measured/{name}`\n\n{text}"))

# %% [markdown]
# ## Head, middle and tail accuracy per loss and training set

# %%
for s in results.settings(runs, by_train_set=False):
    report.show_figure_of(figures.group_accuracy, s.runs, results.method_order(s.runs["method"]), title=s.text,
                          out_dir=out_dir, name=f"groups_{s.slug}")

# %% [markdown]
# ## Balanced against long-tailed training
#
# The same loss trained on the balanced and on the long-tailed set (of equal size): how much
# of the balanced-test and the tail accuracy the imbalance costs.

# %%
for s in results.settings(runs, by_train_set=False):
    report.show_figure_of(figures.balanced_vs_longtailed, s.runs, results.method_order(s.runs["method"]),
                          title=s.text, out_dir=out_dir, name=f"balanced_vs_longtailed_{s.slug}")

# %% [markdown]
# ## Per-class accuracy against training class size
#
# Each class's top-1 on the balanced test set against its number of training images (long-tailed
# training set); lines: the mean over classes of one size and the seeds.

# %%
for s in results.settings(predicted):
    if s.key["train_set"] == "longtailed":
        report.show_figure_of(figures.per_class_vs_count, predictions.per_class_frame(s.runs),
                              results.method_order(s.runs["method"]), title=s.text, out_dir=out_dir,
                              name=f"per_class_{s.slug}")

# %% [markdown]
# ## Confusion matrices, calibration and examples
#
# For the first long-tailed setting: the baseline and the loss with the best tail accuracy.
# Confusion matrices are row-normalised (% of a true class's test images), seeds summed; rows: the
# largest and the smallest training classes; columns: the same classes, then the classes their wrong
# predictions went to most, then all other classes together.

# %%
focus = predictions.focus_runs(predicted, baseline)
if focus:
    key, fruns, shown = focus
    print(f"{results.setting_text(key)}; shown: {', '.join(shown)}")
    report.show_figure_of(figures.confusion_panels, predictions.confusion_subsets(fruns, shown, confusion_classes),
                          out_dir=out_dir, name="confusion")

# %% [markdown]
# Reliability diagrams of every loss on the balanced test set (seeds pooled): accuracy against
# confidence in 15 bins; the dashed diagonal is perfect calibration; ECE, the expected calibration
# error, is the mass-weighted gap.

# %%
if focus:
    bins, ece = predictions.reliability_by_method(fruns)
    report.show_figure_of(figures.reliability, bins, ece, out_dir=out_dir, name="reliability")

# %% [markdown]
# Tail-class test images classified correctly (green) and wrongly (red, with the predicted class)
# by the loss with the best tail accuracy.

# %%
if focus:
    best = fruns[fruns["method"] == shown[-1]]
    table, note = predictions.qualitative_examples(best, examples_per_kind)
    if note:
        print(note)
    elif not len(table):
        print("no tail-class test image to show")
    else:
        from longtail.imagecache import decode_image
        report.show_figure_of(figures.examples, table, [decode_image(p, 128) for p in table["path"]],
                              out_dir=out_dir, name="tail_examples")

# %% [markdown]
# ## Benchmarks
#
# The tables `make bench` wrote to `bench/results/` (speed of the main job, training throughput
# against a bare PyTorch loop, scaling, CIFAR-10-LT against published numbers), where they exist,
# then those measured once on a lent GPU machine (`bench/measured/`).

# %%
from IPython.display import Markdown, display

from longtail import config

if not report.benchmark_tables(config.PROJECT_ROOT / report.BENCH_FOLDERS[0]):  # none measured here yet
    display(Markdown("*No benchmark results yet* from this machine: `make bench` runs `bench/main_job.py`, `bench/throughput.py` "
                     "and `bench/scaling.py` and writes their tables to `bench/results/`; the next report shows "
                     "them here (`bench/gpu.sh` does the same on a GPU)."))
for name, text in report.benchmark_tables():
    if not name.startswith(report.RESULT_TABLE_PREFIXES):  # shown beside the published / the thesis's numbers
        display(Markdown(f"### `{name}`\n\n{text}"))
