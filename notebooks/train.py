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
# # Train one model on a long-tailed (or balanced) training set
#
# One run of the thesis grid: a backbone, a loss, a sampler and a training set.  The cell below
# holds the parameters (papermill replaces them; `longtail.params.describe()` documents each).
# Its values are the main job's (`params/default.yaml`: a linear probe of iNaturalist-insects
# MobileNetV2 features on EU Moths at imbalance factor 8, cross-entropy): after `make` has cached
# the features, Run All trains and evaluates in seconds.
# Everything else is a call into `longtail`; the run folder holds the results
# (`longtail.run` documents its files).

# %% tags=["parameters"]
dataset = 'eu_moths'  # eu_moths | cifar10 | imagefolder | synthetic
data_root = None  # data root; None: $LT_DATA_ROOT, else <project>/data (imagefolder: the image tree)
dataset_params = {}  # extra loader arguments, e.g. {'num_classes': 6} for synthetic
train_set = 'longtailed'  # longtailed | balanced
imbalance_factor = 8  # IF: n_max / n_min of the long-tailed training set
profile = 'exp'  # exp | step | zipf
class_order = 'given'  # given | random (seeded by subset_seed)
n_max = None  # images of the largest class; None: the smallest class size of the base set
balanced_size = 'matched'  # matched (same total as the long-tailed set, spread evenly) | full
subset_seed = 0  # seed of the training subset and validation split
subset_method = 'permutation'  # how a class's kept images are drawn: permutation (numpy Generator) | reference (Cao et al.'s LDAM-DRW code: legacy np.random.seed(subset_seed), one shuffle a class in class order)
val_fraction = 0.0  # fraction of each training class held out for model selection; null: 0.1 of a derived training set, none of given sets (used as they are: the last epoch is kept) or with val_source unused
val_source = 'split'  # split (val_fraction of the training set) | unused (a balanced set of the training-fold images no training subset uses, val_per_class a class; needs val_fraction null or 0)
val_per_class = 2  # images a class of the unused validation set (val_source unused)
group_scheme = 'auto'  # head/middle/tail from the long-tailed training counts: thresholds (group_thresholds) | thirds (classes by count cut into three) | auto (thresholds where all three groups are non-empty, else thirds)
group_thresholds = [100, 20]  # [many, few]: head classes have more than many long-tailed training images, tail classes fewer than few (default: the survey's many/few shots, Zhang et al., Deep Long-Tailed Learning: A Survey, TPAMI 2023); integers, 0 <= few < many
test_longtailed_rule = 'at_least_one'  # how the physical long-tailed test set (eval_protocol thesis) is sampled from the balanced one where it is not given: at_least_one (round(r n_c) images a class, at least one) | proportional (the training prior without a floor: group shares as in training to one image, a class may have none)
eval_protocol = 'weighted'  # what the tables show (every run computes both): weighted (balanced test set weighted by the training prior, macro F1, CE) | thesis (physical long-tailed test set, groups partition it, support-weighted F1, the method's own loss)
on_error = 'raise'  # unreadable image: raise | skip
backbone = 'mobilenetv2'  # mobilenetv2 | resnet50v2 | vit_b16 | convnext_base | resnet32 | any timm name
pretrained = 'inat_insects'  # None | timm | inat_insects | imagenet_coral | path to a state dict
weights_dir = None  # folder of local weights; None: $LT_WEIGHTS_DIR, else <project>/weights
cosine_head = None  # normalised classifier; None: on for ldam, off otherwise
image_size = None  # input size; None: the backbone's default
mode = 'linear'  # linear (frozen backbone, cached features) | finetune | crt | partial (the last partial_blocks units trained on cached outputs of the frozen first ones)
partial_blocks = 2  # mode partial: trailing backbone units trained with the classifier (MobileNetV2: 1 conv_head, 2 + the last stage, 3 + the last two stages; 0 the classifier alone)
partial_views = 4  # mode partial: augmented views of each training image whose frozen-prefix outputs are cached
freeze_bn = 'none'  # modes finetune, crt, partial: BatchNorm while training: none (train mode: batch statistics, running statistics updated) | stats (eval mode: the pretrained running statistics, gamma and beta trained) | all (statistics, gamma and beta frozen)
head_init = 'random'  # modes finetune, crt, partial: the classifier's start: random | linear_probe (LP-FT, Kumar et al. ICLR 2022: first trained on the frozen pretrained features of the fitting images with mode linear's default recipe, then fine-tuned with everything else)
backbone_lr_scale = 1.0  # modes finetune, crt, partial: lr of every parameter but the classifier's = lr x this (discriminative rates; 0 keeps the backbone's weights fixed)
loss = 'ce'  # a loss of longtail.losses.LOSSES (ce, focal, balanced_softmax, ldam, ...: its table lists them)
loss_params = {}  # parameters of the loss, e.g. {'gamma': 2.0}
drw_epoch = None  # deferred re-weighting: epoch at which class-balanced weights switch on (None: off)
drw_beta = 0.9999  # beta of the DRW class-balanced weights
sampler = 'instance'  # instance | class_balanced | square_root | power | progressive
sampler_params = {}  # parameters of the sampler, e.g. {'q': 0.5}
posthoc = 'none'  # evaluation-time adjustment: none | logit_adjust | tau_norm
posthoc_tau = 1.0  # tau of the post-hoc adjustment
posthoc_tau_grid = []  # tau values tried on the validation split, the best one used (empty: posthoc_tau)
technique = 'none'  # mode linear: none | lws | weight_balancing | ncm | cosine_prototypes | feature_calibration | lbfgs_probe | knn
technique_params = {}  # parameters of the technique, e.g. {'k_grid': [2]} (longtail.methods.TECHNIQUES)
feature_power = 1.0  # mode linear: Tukey's power transform x^λ of every feature before the head (1: off, 0: log(x + 1e-6); longtail.methods.prepare_features)
feature_standardize = False  # mode linear: standardise every feature dimension with the mean and standard deviation of the fitting images (after feature_power)
tune = {}  # mode linear: {parameter: [candidate values]} tried on the validation split, every combination trained, the best validation balanced accuracy kept (ties: the first); parameters: loss_params, technique_params, weight_decay, feature_power, feature_standardize
tta = 'none'  # mode linear: views whose features are averaged, for training and test alike: none | flip | five_crop (centre and four corners) | ten_crop (and their mirror images)
label = None  # a free name of a grid entry (a leaderboard row); computes nothing
epochs = 30  # training epochs
crt_epochs = 10  # classifier re-training epochs (mode crt)
batch_size = 64  # training batch size
eval_batch_size = 32  # evaluation and feature-extraction batch size (on a CPU, image batches hold at most engine.CPU_IMAGE_BATCH = 8, the fastest measured; raise it on a GPU)
optimizer = 'sgd'  # sgd | adamw
lr = 0.1  # peak learning rate
momentum = 0.9  # SGD momentum
nesterov = True  # Nesterov momentum (SGD)
weight_decay = 0.0005  # weight decay
decay_norm_and_bias = False  # weight decay on biases and normalisation parameters too (the LDAM-DRW code: true)
schedule = 'cosine'  # cosine | step | constant
warmup_epochs = 0  # linear warm-up epochs
warmup_unit = 'step'  # warm-up raises the lr every step | epoch (the LDAM-DRW code: epoch)
lr_steps = []  # epochs at which the step schedule multiplies the lr by lr_gamma
lr_gamma = 0.1  # step schedule factor
grad_clip = None  # max gradient norm (None: off)
augment = 'auto'  # auto | rrc | light | cifar | flip | none (auto: cifar for 32 px, light otherwise)
randaugment = False  # RandAugment (2 ops, magnitude 9) on training images
mixup_alpha = 0.0  # mixup alpha (0: off)
cutmix_alpha = 0.0  # CutMix alpha (0: off)
device = 'auto'  # auto (cuda, mps, cpu) | cuda | cuda:N | mps | cpu
precision = 'auto'  # auto (bf16 autocast on CUDA, fp32 elsewhere) | bf16 | fp32
channels_last = True  # channels_last memory format for conv nets
compile = False  # torch.compile the model
cuda_graph = False  # replay the model's forward and backward as one CUDA graph per step (CUDA only; ignored on other devices): removes the kernel-launch overhead that bounds small models such as ResNet-32
seed = 0  # training seed (initialisation, sampling order, augmentation)
save_checkpoints = True  # write last.pt and best.pt
monitor_test = False  # record test top-1 after every epoch in history.csv (monitor_acc), only to compare with papers that report their best test epoch; never used for model selection
output_dir = None  # run folder; None: <runs>/<run id>
# %%
from longtail import figures
from longtail.tables import run_metrics_table
from longtail.params import SCHEMA
from longtail.report import show_figure, show_table
from longtail.run import run_training

result = run_training({name: globals()[name] for name in SCHEMA})
print("run folder:", result.output_dir)
groups = run_metrics_table(result.metrics)  # top-1, F1, ECE and loss per test split and class group
show_table(groups, caption=f"{loss} on the {train_set} training set: the test splits and class groups")

# %% [markdown]
# ## Learning curves

# %%
if len(result.history):
    show_figure(figures.learning_curves(result.history))
else:  # class prototypes (technique ncm, cosine_prototypes) train nothing
    print("no training epochs: the classifier is built from class means")

# %% [markdown]
# ## Top-1 accuracy per test split and class group

# %%
show_figure(figures.split_accuracy(groups, title=f"{loss} on the {train_set} training set"))
