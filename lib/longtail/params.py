"""The parameters of one training run: defaults, documentation, and validation.

``validate(params)`` checks every key and every named choice (data set, backbone, loss and its
parameters, sampler and its parameters, mode, ...) and raises one error naming each bad value
with the valid choices, before any data is loaded or any model is built.  The training notebook's
``parameters`` cell and the grid's parameter files use exactly these names.
"""
from __future__ import annotations

import copy
import inspect
import math

from . import data, metrics, subsets
from .imagecache import ON_ERROR
from .subsets import GROUP_THRESHOLDS, group_thresholds_problem

# name: (default, description).  Order = the notebook's parameters cell.
SCHEMA: dict[str, tuple[object, str]] = {
    # data
    "dataset": ("synthetic", "eu_moths | cifar10 | imagefolder | synthetic"),
    "data_root": (None, "data root; None: $LT_DATA_ROOT, else <project>/data (imagefolder: the image tree)"),
    "dataset_params": ({}, "extra loader arguments, e.g. {'num_classes': 6} for synthetic"),
    "train_set": ("longtailed", "longtailed | balanced"),
    "imbalance_factor": (100.0, "IF: n_max / n_min of the long-tailed training set"),
    "profile": ("exp", "exp | step | zipf"),
    "class_order": ("given", "given | random (seeded by subset_seed)"),
    "n_max": (None, "images of the largest class; None: the smallest class size of the base set"),
    "balanced_size": ("matched", "matched (same total as the long-tailed set, spread evenly) | full"),
    "subset_seed": (0, "seed of the training subset and validation split"),
    "subset_method": ("permutation", "how a class's kept images are drawn: permutation (numpy Generator) | "
                      "reference (Cao et al.'s LDAM-DRW code: legacy np.random.seed(subset_seed), one shuffle a class in class order)"),
    "val_fraction": (None, "fraction of each training class held out for model selection; null: 0.1 of a derived "
                     "training set, none of given sets (used as they are: the last epoch is kept) or with val_source unused"),
    "val_source": ("split", "split (val_fraction of the training set) | unused (a balanced set of the training-fold "
                            "images no training subset uses, val_per_class a class; needs val_fraction null or 0)"),
    "val_per_class": (2, "images a class of the unused validation set (val_source unused)"),
    "group_scheme": ("auto", "head/middle/tail from the long-tailed training counts: thresholds (group_thresholds) | "
                     "thirds (classes by count cut into three) | auto (thresholds where all three groups are non-empty, "
                     "else thirds)"),
    "group_thresholds": (list(GROUP_THRESHOLDS), "[many, few]: head classes have more than many long-tailed training "
                         "images, tail classes fewer than few (default: the survey's many/few shots, Zhang et al., "
                         "Deep Long-Tailed Learning: A Survey, TPAMI 2023); integers, 0 <= few < many"),
    "test_longtailed_rule": ("at_least_one", "how the physical long-tailed test set (eval_protocol thesis) is sampled "
                             "from the balanced one where it is not given: at_least_one (round(r n_c) images a class, at "
                             "least one) | proportional (the training prior without a floor: group shares as in "
                             "training to one image, a class may have none)"),
    "eval_protocol": ("weighted", "what the tables show (every run computes both): weighted (balanced test set weighted "
                      "by the training prior, macro F1, CE) | thesis (physical long-tailed test set, groups partition "
                      "it, support-weighted F1, the method's own loss)"),
    "on_error": ("raise", "unreadable image: raise | skip"),
    # model
    "backbone": ("mobilenetv2", "mobilenetv2 | resnet50v2 | vit_b16 | convnext_base | resnet32 | any timm name"),
    "pretrained": (None, "None | timm | inat_insects | imagenet_coral | path to a state dict"),
    "weights_dir": (None, "folder of local weights; None: $LT_WEIGHTS_DIR, else <project>/weights"),
    "cosine_head": (None, "normalised classifier; None: on for ldam, off otherwise"),
    "image_size": (None, "input size; None: the backbone's default"),
    "mode": ("linear", "linear (frozen backbone, cached features) | finetune | crt | partial (the last "
                       "partial_blocks units trained on cached outputs of the frozen first ones)"),
    "partial_blocks": (2, "mode partial: trailing backbone units trained with the classifier (MobileNetV2: 1 "
                          "conv_head, 2 + the last stage, 3 + the last two stages; 0 the classifier alone)"),
    "partial_views": (4, "mode partial: augmented views of each training image whose frozen-prefix outputs are cached"),
    "freeze_bn": ("none", "modes finetune, crt, partial: BatchNorm while training: none (train mode: batch statistics, "
                          "running statistics updated) | stats (eval mode: the pretrained running statistics, gamma and "
                          "beta trained) | all (statistics, gamma and beta frozen)"),
    "head_init": ("random", "modes finetune, crt, partial: the classifier's start: random | linear_probe (LP-FT, Kumar "
                            "et al. ICLR 2022: first trained on the frozen pretrained features of the fitting images "
                            "with mode linear's default recipe, then fine-tuned with everything else)"),
    "backbone_lr_scale": (1.0, "modes finetune, crt, partial: lr of every parameter but the classifier's = lr x this "
                               "(discriminative rates; 0 keeps the backbone's weights fixed)"),
    # loss and sampling
    "loss": ("ce", "a loss of longtail.losses.LOSSES (ce, focal, balanced_softmax, ldam, ...: its table lists them)"),
    "loss_params": ({}, "parameters of the loss, e.g. {'gamma': 2.0}"),
    "drw_epoch": (None, "deferred re-weighting: epoch at which class-balanced weights switch on (None: off)"),
    "drw_beta": (0.9999, "beta of the DRW class-balanced weights"),
    "sampler": ("instance", "instance | class_balanced | square_root | power | progressive"),
    "sampler_params": ({}, "parameters of the sampler, e.g. {'q': 0.5}"),
    "posthoc": ("none", "evaluation-time adjustment: none | logit_adjust | tau_norm"),
    "posthoc_tau": (1.0, "tau of the post-hoc adjustment"),
    "posthoc_tau_grid": ([], "tau values tried on the validation split, the best one used (empty: posthoc_tau)"),
    # classifier-stage techniques on frozen features (longtail.methods)
    "technique": ("none", "mode linear: none | lws | weight_balancing | ncm | cosine_prototypes | feature_calibration | "
                          "lbfgs_probe | knn"),
    "technique_params": ({}, "parameters of the technique, e.g. {'k_grid': [2]} (longtail.methods.TECHNIQUES)"),
    "feature_power": (1.0, "mode linear: Tukey's power transform x^λ of every feature before the head (1: off, 0: "
                           "log(x + 1e-6); longtail.methods.prepare_features)"),
    "feature_standardize": (False, "mode linear: standardise every feature dimension with the mean and standard "
                                   "deviation of the fitting images (after feature_power)"),
    "tune": ({}, "mode linear: {parameter: [candidate values]} tried on the validation split, every combination "
                 "trained, the best validation balanced accuracy kept (ties: the first); parameters: "
                 "loss_params, technique_params, weight_decay, feature_power, feature_standardize"),
    "tta": ("none", "mode linear: views whose features are averaged, for training and test alike: none | flip | "
                   "five_crop (centre and four corners) | ten_crop (and their mirror images)"),
    "label": (None, "a free name of a grid entry (a leaderboard row); computes nothing"),
    # optimisation
    "epochs": (30, "training epochs"),
    "crt_epochs": (10, "classifier re-training epochs (mode crt)"),
    "batch_size": (128, "training batch size"),
    "eval_batch_size": (32, "evaluation and feature-extraction batch size (on a CPU, image batches hold at most "
                        "engine.CPU_IMAGE_BATCH = 8, the fastest measured; raise it on a GPU)"),
    "optimizer": ("sgd", "sgd | adamw"),
    "lr": (0.1, "peak learning rate"),
    "momentum": (0.9, "SGD momentum"),
    "nesterov": (True, "Nesterov momentum (SGD)"),
    "weight_decay": (5e-4, "weight decay"),
    "decay_norm_and_bias": (False, "weight decay on biases and normalisation parameters too (the LDAM-DRW code: true)"),
    "schedule": ("cosine", "cosine | step | constant"),
    "warmup_epochs": (0, "linear warm-up epochs"),
    "warmup_unit": ("step", "warm-up raises the lr every step | epoch (the LDAM-DRW code: epoch)"),
    "lr_steps": ([], "epochs at which the step schedule multiplies the lr by lr_gamma"),
    "lr_gamma": (0.1, "step schedule factor"),
    "grad_clip": (None, "max gradient norm (None: off)"),
    "augment": ("auto", "auto | rrc | light | cifar | flip | none (auto: cifar for 32 px, light otherwise)"),
    "randaugment": (False, "RandAugment (2 ops, magnitude 9) on training images"),
    "mixup_alpha": (0.0, "mixup alpha (0: off)"),
    "cutmix_alpha": (0.0, "CutMix alpha (0: off)"),
    # machine
    "device": ("auto", "auto (cuda, mps, cpu) | cuda | cuda:N | mps | cpu"),
    "precision": ("auto", "auto (bf16 autocast on CUDA, fp32 elsewhere) | bf16 | fp32"),
    "channels_last": (True, "channels_last memory format for conv nets"),
    "compile": (False, "torch.compile the model"),
    "cuda_graph": (False, "replay the model's forward and backward as one CUDA graph per step (CUDA only; "
                   "ignored on other devices): removes the kernel-launch overhead that bounds small models such as ResNet-32"),
    "seed": (0, "training seed (initialisation, sampling order, augmentation)"),
    "save_checkpoints": (True, "write last.pt and best.pt"),
    "monitor_test": (False, "record test top-1 after every epoch in history.csv (monitor_acc), only to compare with "
                     "papers that report their best test epoch; never used for model selection"),
    "output_dir": (None, "run folder; None: <runs>/<run id>"),
}
DEFAULTS = {k: v[0] for k, v in SCHEMA.items()}

TRAIN_SETS = ("longtailed", "balanced")
MODES = ("linear", "finetune", "crt", "partial")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "constant")
POSTHOC = ("none", "logit_adjust", "tau_norm")
PRECISIONS = ("auto", "bf16", "fp32")
BALANCED_SIZES = ("matched", "full")
WARMUP_UNITS = ("step", "epoch")
FREEZE_BN = ("none", "stats", "all")
HEAD_INITS = ("random", "linear_probe")
#: the parameters ``tune`` may try on the validation split: those that act after the features are
#: extracted (a linear run trains one head per candidate on the cached features)
TUNABLE = ("loss_params", "technique_params", "weight_decay", "feature_power", "feature_standardize")


class ParameterError(ValueError):
    """One or more bad parameters; the message lists each with its valid choices."""


JSON_TYPES = "str, int, float (finite), bool, null, list, mapping with str keys"


def json_type_errors(value, where: str, *, scalar_keys: bool = False) -> list[str]:
    """Problems that make ``value`` not plain JSON, recursively: one line per bad item, naming it.

    Only JSON types are accepted (``JSON_TYPES``): a YAML ``!!binary`` (bytes), ``!!set``, a date or
    any other object is refused, as are NaN and infinities.  Every run parameter reaches the
    notebook as Python source written by papermill; for these types alone that source is a plain
    literal.  ``scalar_keys`` also allows int, float, bool and null mapping keys (a grid file's
    ``overrides`` are keyed by parameter values).
    """
    if value is None or isinstance(value, (str, bool, int)):
        return []
    if isinstance(value, float):
        return [] if math.isfinite(value) else [f"{where}={value!r}: not a finite number"]
    if isinstance(value, list):
        return [e for i, v in enumerate(value) for e in json_type_errors(v, f"{where}[{i}]", scalar_keys=scalar_keys)]
    if isinstance(value, dict):
        errors = []
        for k, v in value.items():
            ok_key = isinstance(k, str) or (scalar_keys and (k is None or isinstance(k, (bool, int)) or
                                                             (isinstance(k, float) and math.isfinite(k))))
            if not ok_key:
                errors.append(f"{where}: key {k!r:.80} is a {type(k).__name__}; keys must be strings")
            errors += json_type_errors(v, f"{where}.{k}", scalar_keys=scalar_keys)
        return errors
    return [f"{where}: a {type(value).__name__} ({value!r:.80}) is not accepted; values must be JSON types: "
            f"{JSON_TYPES}"]


# ------------------------------------------------------------------- types and ranges of the values

def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _range(kind: str, lo=None, hi=None, *, lo_open=False, hi_open=False, none=False):
    """A rule: an integer or a (finite) number in a range, optionally None."""
    is_kind = _is_int if kind == "int" else _is_number
    if lo is not None and hi is not None:
        what = f"{'an integer' if kind == 'int' else 'a number'} in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    elif lo is not None:
        what = (f"a positive integer" if kind == "int" and lo == 1 and not lo_open else
                f"{'an integer' if kind == 'int' else 'a number'} {'>' if lo_open else '>='} {lo}")
    else:
        what = "an integer" if kind == "int" else "a number"
    what = f"null or {what}" if none else what

    def check(v):
        if v is None and none:
            return None
        ok = is_kind(v) and (lo is None or (v > lo if lo_open else v >= lo)) and \
            (hi is None or (v < hi if hi_open else v <= hi))
        return None if ok else f"must be {what}"
    return check


def _of_type(*types, none=False, what: str = ""):
    def check(v):
        if v is None and none:
            return None
        ok = isinstance(v, types) and not (bool not in types and isinstance(v, bool)) and v != ""
        return None if ok else f"must be {what}"
    return check


def _int_list(v):
    ok = isinstance(v, list) and all(_is_int(x) and x >= 0 for x in v)
    return None if ok else "must be a list of integers >= 0 (epochs), e.g. [60, 80]"


def _device(v):
    import re
    ok = isinstance(v, str) and re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v)
    return None if ok else "choose one of auto, cpu, cuda, cuda:N, mps"


def _pretrained(v):
    from .models import LOCAL_WEIGHTS
    names = ("none", "timm", *LOCAL_WEIGHTS)
    if v is None or v in names:
        return None
    looks_like_path = isinstance(v, str) and ("/" in v or v.endswith((".pt", ".pth", ".bin", ".safetensors")))
    return None if looks_like_path else f"choose one of null, {', '.join(names)}, or a path to a state dict (.pt/.pth)"


_BOOL = _of_type(bool, what="true or false")
_BOOL_OR_NONE = _of_type(bool, none=True, what="null, true or false")
_PATH = _of_type(str, none=True, what="null or a path (a non-empty string)")
_MAPPING = _of_type(dict, none=True, what="a mapping of parameter names to values, e.g. {}")
_SEED = _range("int", 0, 2**32 - 1)
#: the type and range of each non-choice parameter (the named choices are checked against their lists)
RULES = {
    "data_root": _PATH, "weights_dir": _PATH, "output_dir": _PATH,
    "dataset_params": _MAPPING, "loss_params": _MAPPING, "sampler_params": _MAPPING,
    "imbalance_factor": _range("float", 1), "n_max": _range("int", 1, none=True),
    "subset_seed": _SEED, "seed": _SEED, "val_fraction": _range("float", 0, 1, hi_open=True, none=True),
    "group_thresholds": group_thresholds_problem,
    "backbone": _of_type(str, what="a backbone name"), "pretrained": _pretrained,
    "cosine_head": _BOOL_OR_NONE, "image_size": _range("int", 1, none=True),
    "drw_epoch": _range("int", 0, none=True), "drw_beta": _range("float", 0, 1, hi_open=True),
    "posthoc_tau": _range("float", 0),
    "epochs": _range("int", 1), "crt_epochs": _range("int", 1), "batch_size": _range("int", 1),
    "eval_batch_size": _range("int", 1), "lr": _range("float", 0, lo_open=True),
    "momentum": _range("float", 0, 1, hi_open=True), "weight_decay": _range("float", 0),
    "warmup_epochs": _range("int", 0), "lr_steps": _int_list, "lr_gamma": _range("float", 0, lo_open=True),
    "grad_clip": _range("float", 0, lo_open=True, none=True),
    "randaugment": _BOOL, "mixup_alpha": _range("float", 0), "cutmix_alpha": _range("float", 0),
    "device": _device, "channels_last": _BOOL, "compile": _BOOL, "cuda_graph": _BOOL, "save_checkpoints": _BOOL,
    "nesterov": _BOOL, "decay_norm_and_bias": _BOOL, "monitor_test": _BOOL,
    "val_per_class": _range("int", 1), "technique_params": _MAPPING,
    "partial_blocks": _range("int", 0), "partial_views": _range("int", 1),
    "backbone_lr_scale": _range("float", 0),
    "label": _of_type(str, none=True, what="null or a name (a non-empty string)"),
    "feature_power": _range("float", 0), "feature_standardize": _BOOL, "tune": _MAPPING,
}


def dataset_param_names(dataset: str) -> dict:
    """The loader's keyword parameters (``dataset_params``) with their defaults."""
    sig = inspect.signature(data.DATASETS[dataset])
    return {n: q.default for n, q in sig.parameters.items()
            if n != "root" and q.kind in (q.POSITIONAL_OR_KEYWORD, q.KEYWORD_ONLY)}


def _dataset_params_errors(dataset: str, given: dict) -> list[str]:
    valid = dataset_param_names(dataset)
    bad = sorted(set(given) - set(valid))
    if bad:
        return [f"dataset_params {bad} are not parameters of dataset {dataset!r}; valid: {', '.join(valid) or '(none)'}"]
    errors = []
    for k, v in given.items():  # the type of the loader's default (a tuple default takes a list)
        d = valid[k]
        ok = (d is None or d is inspect.Parameter.empty or (isinstance(d, bool) and isinstance(v, bool))
              or (not isinstance(d, bool) and isinstance(d, int) and _is_int(v))
              or (isinstance(d, float) and _is_number(v)) or (isinstance(d, str) and isinstance(v, str))
              or (isinstance(d, (tuple, list)) and isinstance(v, list)))
        if not ok:
            errors.append(f"dataset_params.{k}={v!r}: must be of the type of its default {d!r}")
        elif (check := data.DATASET_PARAM_CHECKS.get(dataset, {}).get(k)) is not None and (problem := check(v)):
            errors.append(f"dataset_params.{problem}")
    return errors


def _choice(errors, params, key, choices):
    if params[key] not in choices:
        errors.append(f"{key}={params[key]!r}: choose one of {', '.join(map(str, choices))}")


def _named_with_params(errors, kind, name, params, table, param_names, build) -> None:
    """A name from ``table`` and its parameters: unknown ones listed with the valid ones, then a
    trial construction (tiny dummy data) that catches missing or out-of-range values."""
    if name not in table:
        errors.append(f"{kind}={name!r}: choose one of {', '.join(table)}")
        return
    valid = param_names(name)
    bad = sorted(set(params or {}) - set(valid))
    if bad:
        errors.append(f"{kind}_params {bad} are not parameters of {kind} {name!r}; valid: {', '.join(valid) or '(none)'}")
        return
    try:
        build()
    except (TypeError, ValueError) as exc:
        errors.append(f"{kind} {name!r} with {kind}_params {params or {}}: {exc}")


def resolve(params: dict | None = None) -> dict:
    """The run's parameters with the defaults filled in and ``imbalance_factor`` a float: what
    ``validate`` returns for valid parameters, without checking them (keys outside ``SCHEMA`` are
    dropped).  Needs neither torch nor the data: the grid's run ids and folders come from it."""
    resolved = copy.deepcopy(DEFAULTS)
    resolved.update({k: v for k, v in (params or {}).items() if k in SCHEMA})
    if _is_number(resolved["imbalance_factor"]):
        resolved["imbalance_factor"] = float(resolved["imbalance_factor"])
    return resolved


def validate(params: dict | None = None, *, check_backbone: bool = True) -> dict:
    """``resolve(params)`` with every value checked; raises ParameterError listing all problems."""
    # modules that import torch: imported when checking, so that reading parameters (``resolve``: run
    # ids, folders, the report) stays free of torch's import
    from . import losses, models, samplers, transforms

    params = dict(params or {})
    unknown = sorted(set(params) - set(SCHEMA), key=str)
    errors = [f"unknown parameter {k!r}" for k in unknown]
    if unknown:
        errors.append("valid parameters: " + ", ".join(SCHEMA))
    # JSON types first: the checks below (and papermill's injected cell) assume them
    not_json = [e for k, v in params.items() if k in SCHEMA for e in json_type_errors(v, k)]
    if not_json:
        errors += not_json
        raise ParameterError("invalid run parameters:\n  " + "\n  ".join(errors))
    p = resolve(params)
    ill_typed = set()
    for key, rule in RULES.items():
        problem = rule(p[key])
        if problem:
            ill_typed.add(key)
            errors.append(f"{key}={p[key]!r}: {problem}")
    _choice(errors, p, "dataset", tuple(data.DATASETS))
    _choice(errors, p, "train_set", TRAIN_SETS)
    _choice(errors, p, "profile", subsets.PROFILES)
    _choice(errors, p, "class_order", subsets.CLASS_ORDERS)
    _choice(errors, p, "balanced_size", BALANCED_SIZES)
    _choice(errors, p, "group_scheme", subsets.GROUP_SCHEMES)
    _choice(errors, p, "test_longtailed_rule", subsets.LT_TEST_RULES)
    _choice(errors, p, "eval_protocol", metrics.PROTOCOLS)
    _choice(errors, p, "on_error", ON_ERROR)
    _choice(errors, p, "mode", MODES)
    _choice(errors, p, "optimizer", OPTIMIZERS)
    _choice(errors, p, "schedule", SCHEDULES)
    _choice(errors, p, "warmup_unit", WARMUP_UNITS)
    _choice(errors, p, "freeze_bn", FREEZE_BN)
    _choice(errors, p, "head_init", HEAD_INITS)
    _choice(errors, p, "subset_method", subsets.SUBSET_METHODS)
    _choice(errors, p, "posthoc", POSTHOC)
    _choice(errors, p, "precision", PRECISIONS)
    _choice(errors, p, "augment", ("auto", *transforms.AUGMENTS))
    if p["compile"] is True and p["cuda_graph"] is True:
        errors.append("compile=True with cuda_graph=True: choose one (torch.compile has its own CUDA graphs: "
                      "mode 'reduce-overhead')")
    if p["dataset"] in data.DATASETS and "dataset_params" not in ill_typed:
        errors += _dataset_params_errors(p["dataset"], p["dataset_params"] or {})
    if "loss_params" not in ill_typed:
        _named_with_params(errors, "loss", p["loss"], p["loss_params"], losses.LOSSES, losses.loss_param_names,
                           lambda: losses.build_loss(p["loss"], [2, 1], **(p["loss_params"] or {})))
    if p["loss"] in losses.LOSSES and p["drw_epoch"] is not None and not losses.drw_eligible(p["loss"]):
        takes = [n for n in losses.LOSSES if losses.drw_eligible(n)]
        errors.append(f"drw_epoch={p['drw_epoch']!r} with loss {p['loss']!r}: DRW re-weights a loss that takes "
                      f"class weights; use one of {', '.join(takes)} (or drw_epoch None)")
    if "sampler_params" not in ill_typed:
        _named_with_params(errors, "sampler", p["sampler"], p["sampler_params"], samplers.SAMPLERS,
                           samplers.sampler_param_names,
                           lambda: samplers.build_sampler(p["sampler"], [0, 1], 0, **(p["sampler_params"] or {})))
    if check_backbone and "backbone" not in ill_typed:
        if not models.is_known_backbone(str(p["backbone"])):
            errors.append(f"backbone={p['backbone']!r}: choose one of {', '.join(models.ALIASES)}, resnet32, "
                          "or any name in timm.list_models()")
    _method_errors(errors, p)
    _validation_errors(errors, p)
    if p["mode"] == "partial" and "backbone" not in ill_typed and not models.has_blocks(str(p["backbone"])):
        errors.append(f"backbone={p['backbone']!r} with mode='partial': its blocks are known for "
                      f"{', '.join(models.BLOCK_BACKBONES)}; use one of those or mode finetune")
    if errors:
        raise ParameterError("invalid run parameters:\n  " + "\n  ".join(errors))
    return p


def _method_errors(errors: list, p: dict) -> None:
    """A technique of ``longtail.methods`` and its parameters, TTA, feature preparation and tuning, and
    what each mode can train: the frozen-feature methods need mode linear, the fine-tuning recipe a
    backbone that trains."""
    from . import methods, transforms  # import torch
    _choice(errors, p, "tta", tuple(transforms.TTA_VIEWS))
    _named_with_params(errors, "technique", p["technique"], p["technique_params"], methods.TECHNIQUES,
                       methods.technique_param_names,
                       lambda: methods.technique_params(p["technique"], p["technique_params"]))
    if p["mode"] != "linear":
        for key in ("technique", "tta", "feature_power", "feature_standardize", "tune"):
            if p[key] != DEFAULTS[key]:
                errors.append(f"{key}={p[key]!r} with mode={p['mode']!r}: works on frozen features; use mode linear")
    else:
        for key in ("freeze_bn", "head_init", "backbone_lr_scale"):
            if p[key] != DEFAULTS[key]:
                errors.append(f"{key}={p[key]!r} with mode='linear': a frozen backbone has nothing to fine-tune; "
                              f"use mode finetune, crt or partial (or {key} {DEFAULTS[key]!r})")
    if p["technique"] == "lbfgs_probe" and (p["cosine_head"] or (p["cosine_head"] is None and p["loss"] == "ldam")):
        errors.append("technique='lbfgs_probe' with a cosine head (cosine_head true, or loss ldam): the probe is a "
                      "linear layer started from zero weights; use another loss or cosine_head false")
    if p["technique"] == "feature_calibration" and p["feature_standardize"] is True:
        errors.append("feature_standardize=True with technique='feature_calibration': calibration's Tukey transform "
                      "needs the non-negative features that standardisation takes away; use feature_power instead")
    if isinstance(p["tune"], dict):
        errors += _tune_errors(p)
    if p["technique"] in methods.PROTOTYPE_TECHNIQUES + ("lws",) and p["posthoc"] == "tau_norm":
        errors.append(f"posthoc='tau_norm' with technique={p['technique']!r}: τ-norm rescales a linear head's "
                      "weights; use posthoc logit_adjust or none")


def _validation_errors(errors: list, p: dict) -> None:
    """The validation split (its source, fraction, size a class) and what is tuned on it: a run that
    tunes something (``tuned_on_validation``) needs one."""
    _choice(errors, p, "val_source", subsets.VAL_SOURCES)
    fraction = float(p["val_fraction"]) if _is_number(p["val_fraction"]) else 0.0  # a bad one is reported by its rule
    if p["val_source"] == "unused" and fraction > 0:
        errors.append(f"val_fraction={p['val_fraction']!r} with val_source='unused': the validation set is drawn "
                      "from unused training-fold images; set val_fraction null or 0")
    if not isinstance(p["val_per_class"], int) or p["val_per_class"] < 1:
        errors.append(f"val_per_class={p['val_per_class']!r}: must be a positive integer")
    # null: a split of derived sets; given sets (none) are checked once loaded (longtail.run)
    has_val = p["val_source"] == "unused" or fraction > 0 or p["val_fraction"] is None
    grid = p["posthoc_tau_grid"]
    if not isinstance(grid, list) or not all(isinstance(t, (int, float)) for t in grid):
        errors.append(f"posthoc_tau_grid={grid!r}: must be a list of numbers")
    elif grid and p["posthoc"] == "none":
        errors.append(f"posthoc_tau_grid={grid!r} with posthoc='none': choose posthoc logit_adjust or tau_norm")
    elif not has_val and (needs := tuned_on_validation(p)):
        errors.append(f"{needs}; set val_source unused (or val_fraction > 0)"
                      + (", or give each of them one value in technique_params" if p["technique"] != "none" else ""))


def tune_candidates(tune: dict) -> list[dict]:
    """Every combination of ``tune``'s candidate values ({parameter: value}, the last parameter
    varying fastest); [{}] when nothing is tuned."""
    import itertools
    keys = list(tune or {})
    return [dict(zip(keys, values)) for values in itertools.product(*(tune[k] for k in keys))]


def _tune_errors(p: dict) -> list[str]:
    """``tune``'s parameters and every candidate value, each checked as that parameter's value."""
    errors = []
    for key, values in p["tune"].items():
        if key not in TUNABLE:
            errors.append(f"tune.{key}: not tunable; choose among {', '.join(TUNABLE)}")
        elif not isinstance(values, list) or not values:
            errors.append(f"tune.{key}={values!r}: a non-empty list of candidate values")
    if errors:
        return errors
    given = {k: v for k, v in p.items() if v != DEFAULTS[k] and k not in ("tune", "output_dir")}
    for key, values in p["tune"].items():
        for v in values:
            try:
                validate({**given, key: v}, check_backbone=False)
            except ParameterError as exc:  # its own problems (the others are reported once, above)
                errors += [f"tune.{key} candidate {v!r}: {line.strip()}" for line in str(exc).splitlines()[1:]
                           if key in line]
    return errors


def tuned_on_validation(p: dict) -> str | None:
    """What of the (type-checked) parameters ``p`` is chosen on the validation split, or None:
    ``posthoc_tau_grid``'s τ, a technique's grids of several values (``methods.tuned_on_validation``)."""
    from . import methods  # imports torch
    if p["posthoc_tau_grid"] and p["posthoc"] != "none":
        return f"posthoc_tau_grid={p['posthoc_tau_grid']!r}: τ is tuned on a validation split"
    if isinstance(p["tune"], dict) and len(tune_candidates(p["tune"])) > 1:
        return f"tune={p['tune']!r}: its candidates are tried on a validation split"
    try:
        tuned = methods.tuned_on_validation(p["technique"], p["technique_params"])
    except (TypeError, ValueError):  # a bad name or parameter: reported by its own rule
        tuned = []
    if tuned:
        return f"technique={p['technique']!r} tunes {', '.join(tuned)} on a validation split"
    return None


def describe() -> str:
    """The parameter table as markdown (README and notebook help)."""
    rows = [f"| `{k}` | `{v[0]!r}` | {v[1]} |" for k, v in SCHEMA.items()]
    return "| parameter | default | meaning |\n|---|---|---|\n" + "\n".join(rows)


def notebook_cell(values: dict | None = None) -> str:
    """The training notebook's ``parameters`` cell: every ``SCHEMA`` parameter in its order, with
    ``values`` (default: ``DEFAULTS``) and its description as the comment.  ``notebooks/train.py``
    holds exactly this text for the main job's values (``tests/test_params.py`` checks it), so a
    parameter added to ``SCHEMA`` reaches the notebook, and its help never drifts."""
    values = {**DEFAULTS, **(values or {})}
    return "\n".join(f"{k} = {values[k]!r}  # {help_}" for k, (_, help_) in SCHEMA.items()) + "\n"
