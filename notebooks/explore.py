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
# # The data set: balanced and long-tailed training sets, test splits, images
#
# The training sets the runs train on (after the validation split, as in a run's `classes.csv`),
# their head / middle / tail groups, the test splits, sample images of each group and the sizes of
# the original images.  All computation is in `longtail.datasummary` and `longtail.figures`.

# %% tags=["parameters"]
dataset = 'eu_moths'  # eu_moths | cifar10 | imagefolder | synthetic
data_root = None  # None: $LT_DATA_ROOT, else <project>/data
dataset_params = {}  # extra loader arguments, e.g. {'num_classes': 6} for synthetic
imbalance_factor = 8.0  # IF = n_max / n_min of the long-tailed training set
profile = 'exp'  # exp | step | zipf
group_scheme = 'auto'  # auto | thresholds | thirds
group_thresholds = [100, 20]  # [many, few]: head > many, tail < few long-tailed training images (the survey's)
test_longtailed_rule = 'at_least_one'  # at_least_one | proportional (the sampled long-tailed test set)
n_max = None  # images of the largest class; None: the smallest class size of the base set
subset_seed = 0  # seed of the training subsets and the validation split
class_order = 'given'  # given | random
val_fraction = None  # fraction of each training class held out; None: 0.1 of derived sets, none of given sets
balanced_size = 'matched'  # matched | full
log_scale = True  # class distribution on a log scale
samples_per_group = 6  # sample images per group
sample_size = 96  # px of the sample images (decoded-image cache)
max_size_files = 3000  # original files whose size is read (a random sample beyond)
out_dir = 'report'  # tables/ and figures/ are written below it

# %%
from IPython.display import display

from longtail import data, datasummary, figures, report, results

figures.setup()
out_dir = results.project_path(out_dir)
ds = data.load_dataset(dataset, data_root, **(dataset_params or {}))
classes = datasummary.class_table(ds, imbalance_factor=imbalance_factor, profile=profile, n_max=n_max,
                                  class_order=class_order, subset_seed=subset_seed, val_fraction=val_fraction,
                                  group_scheme=group_scheme, group_thresholds=group_thresholds,
                                  test_longtailed_rule=test_longtailed_rule, balanced_size=balanced_size)
print(f"{ds.name}: {ds.num_classes} classes, {len(ds.train)} training and {len(ds.test)} test images; "
      f"source: {ds.info.get('source')}" + (f"; cite: {ds.info['citation']}" if ds.info.get("citation") else ""))
display(report.show_table(datasummary.set_summary(classes), out_dir, f"sets_{ds.name}",
                          f"Training and test sets of {ds.name} (imbalance factor {imbalance_factor:g}, {profile} profile)"))

# %% [markdown]
# ## Class distribution of the training sets
#
# Bars: the long-tailed training set, classes sorted by their count and coloured by group; line:
# the balanced training set (as many images in all, spread evenly).

# %%
report.show_figure_of(figures.class_distribution, classes, log=log_scale, out_dir=out_dir,
                      name=f"class_distribution_{ds.name}")

# %% [markdown]
# ## Test splits per class
#
# The balanced test set, the long-tailed test set sampled from it, and the weighted long-tailed
# split the metrics use (each image weighted by its class's training count, Σw per class).

# %%
report.show_figure_of(figures.test_counts, classes, out_dir=out_dir, name=f"test_counts_{ds.name}")
report.save_table(classes.set_index("class"), out_dir, f"classes_{ds.name}", f"Classes of {ds.name}");

# %% [markdown]
# ## Sample images per group
#
# One training image each of classes spread over each group (title: group, class, training images).

# %%
images, picked = datasummary.sample_images(ds, classes, samples_per_group, sample_size, seed=subset_seed)
report.show_figure_of(figures.sample_grid, images, picked, ncols=samples_per_group, out_dir=out_dir,
                      name=f"samples_{ds.name}")

# %% [markdown]
# ## Image sizes
#
# Width and height of the original files (read from the header only).

# %%
sizes = datasummary.image_sizes(ds, max_files=max_size_files, seed=subset_seed)
display(report.show_table(datasummary.size_summary(sizes), out_dir, f"image_sizes_{ds.name}",
                          f"Original image sizes of {ds.name} ({len(sizes)} images)"))
report.show_figure_of(figures.image_sizes, sizes, out_dir=out_dir, name=f"image_sizes_{ds.name}")
