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
from IPython.display import Markdown, display

from longtail import figures, report, results

figures.setup()
out_dir = results.project_path(out_dir)
runs = results.collect_runs(grids)
print(f"{len(runs)} finished runs from {', '.join(map(str, grids))}"
      + (f"; {len(runs.attrs['unfinished'])} without results" if runs.attrs["unfinished"] else ""))
results.save_runs(runs, out_dir);

# %% [markdown]
# ## What helps the tail, at what cost to the head
#
# For the long-tailed training set: each loss's top-1 on the tail classes, the head classes and the
# balanced test set, and its change against the baseline in percentage points (pp), best tail gain
# first.

# %%
tradeoff = results.tail_tradeoff(runs, baseline)
display(Markdown(results.tail_summary(tradeoff, baseline).replace("\n", "\n\n")))
if len(tradeoff):
    display(report.show_table(tradeoff.set_index(["Setting", "Loss"]), out_dir, "tail_tradeoff",
                              f"Tail gain and head cost against {baseline} (long-tailed training set)"))

# %% [markdown]
# ## Tables (the thesis's appendix layout)

# %%
for table in results.appendix_tables(runs):
    display(report.show_table(table, out_dir))

# %% [markdown]
# ## Published numbers for the same protocol
#
# CIFAR-10-LT with a ResNet-32 trained from scratch (`params/cifar10_lt.yaml`) against the numbers
# its papers report; the source of each number is in its row.

# %%
published = results.published_comparison(runs)
if len(published):
    display(report.show_table(published.set_index(["Imbalance factor", "Method"]), out_dir, "published",
                              "Top-1 (%) on the balanced CIFAR-10 test set: published and ours"))
    for source, ref in results.PUBLISHED_REFERENCES.items():
        display(Markdown(f"*{source}*: {ref}"))
else:
    print("No run matches a published protocol (CIFAR-10-LT, ResNet-32 from scratch, long-tailed training set);\n"
          "run params/cifar10_lt.yaml (on a GPU) to compare with Cao et al. 2019.")

# %% [markdown]
# ## Head, middle and tail accuracy per loss and training set

# %%
for s in results.settings(runs, by_train_set=False):
    fig = figures.group_accuracy(s.runs, results.method_order(s.runs["method"]), title=s.text)
    report.show_figure(fig, out_dir, f"groups_{s.slug}")

# %% [markdown]
# ## Balanced against long-tailed training
#
# The same loss trained on the balanced and on the long-tailed set (of equal size): how much
# of the balanced-test and the tail accuracy the imbalance costs.

# %%
for s in results.settings(runs, by_train_set=False):
    fig = figures.balanced_vs_longtailed(s.runs, results.method_order(s.runs["method"]), title=s.text)
    report.show_figure(fig, out_dir, f"balanced_vs_longtailed_{s.slug}")

# %% [markdown]
# ## Per-class accuracy against training class size
#
# Each class's top-1 on the balanced test set against its number of training images (long-tailed
# training set); lines: the mean over classes of one size and the seeds.

# %%
for s in results.settings(runs):
    if s.key["train_set"] == "longtailed":
        fig = figures.per_class_vs_count(results.per_class_frame(s.runs), results.method_order(s.runs["method"]),
                                         title=s.text)
        report.show_figure(fig, out_dir, f"per_class_{s.slug}")

# %% [markdown]
# ## Confusion matrices, calibration and examples
#
# For the first long-tailed setting: the baseline and the loss with the best tail accuracy.
# Confusion matrices are row-normalised (% of a true class's test images), seeds summed; rows: the
# largest and the smallest training classes; columns: the same classes, then the classes their wrong
# predictions went to most, then all other classes together.

# %%
focus = results.focus_runs(runs, baseline)
if focus:
    key, fruns, shown = focus
    print(f"{results.setting_text(key)}; shown: {', '.join(shown)}")
    fig = figures.confusion_panels(results.confusion_subsets(fruns, shown, confusion_classes))
    report.show_figure(fig, out_dir, "confusion")

# %% [markdown]
# Reliability diagrams of every loss on the balanced test set (seeds pooled): accuracy against
# confidence in 15 bins; the dashed diagonal is perfect calibration; ECE, the expected calibration
# error, is the mass-weighted gap.

# %%
if focus:
    bins, ece = results.reliability_by_method(fruns)
    fig = figures.reliability(bins, ece)
    report.show_figure(fig, out_dir, "reliability")

# %% [markdown]
# Tail-class test images classified correctly (green) and wrongly (red, with the predicted class)
# by the loss with the best tail accuracy.

# %%
if focus:
    best = fruns[fruns["method"] == shown[-1]]
    table, note = results.qualitative_examples(best, examples_per_kind)
    if note:
        print(note)
    elif not len(table):
        print("no tail-class test image to show")
    else:
        from longtail.imagecache import decode_image
        fig = figures.examples(table, [decode_image(p, 128) for p in table["path"]])
        report.show_figure(fig, out_dir, "tail_examples")

# %% [markdown]
# ## Benchmarks
#
# The tables `make bench` wrote to `bench/results/` (speed of the main job, training throughput
# against a bare PyTorch loop, scaling, CIFAR-10-LT against published numbers), where they exist.

# %%
from IPython.display import Markdown, display

benchmarks = results.benchmark_tables()
for name, text in benchmarks:
    display(Markdown(f"### `{name}`\n\n{text}"))
if not benchmarks:
    display(Markdown("*No benchmark results yet.* `make bench` runs `bench/main_job.py`, `bench/throughput.py` "
                     "and `bench/scaling.py` and writes their tables to `bench/results/`; the next report shows "
                     "them here (`bench/gpu.sh` does the same on a GPU)."))
