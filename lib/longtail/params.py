"""The parameters of one training run: defaults, documentation, and validation.

``validate(params)`` checks every key and every named choice (data set, backbone, loss and its
parameters, sampler and its parameters, mode, ...) and raises one error naming each bad value
with the valid choices, before any data is loaded or any model is built.  The training notebook's
``parameters`` cell and the grid's parameter files use exactly these names.
"""
from __future__ import annotations

import copy

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
    "val_fraction": (0.1, "fraction of each training class held out for model selection"),
    "val_source": ("split", "split (val_fraction of the training set) | unused (a balanced set of the training-fold "
                            "images no training subset uses, val_per_class a class; needs val_fraction 0)"),
    "val_per_class": (2, "images a class of the unused validation set (val_source unused)"),
    "group_scheme": ("auto", "auto | thresholds | thirds (head/middle/tail)"),
    "on_error": ("raise", "unreadable image: raise | skip"),
    # model
    "backbone": ("mobilenetv2", "mobilenetv2 | resnet50v2 | vit_b16 | convnext_base | resnet32 | any timm name"),
    "pretrained": (None, "None | timm | inat_insects | imagenet_coral | path to a state dict"),
    "weights_dir": (None, "folder of local weights; None: $LT_WEIGHTS_DIR, else <project>/weights"),
    "cosine_head": (None, "normalised classifier; None: on for ldam, off otherwise"),
    "image_size": (None, "input size; None: the backbone's default"),
    "mode": ("linear", "linear (frozen backbone, cached features) | finetune | crt"),
    # loss and sampling
    "loss": ("ce", "ce | focal | weighted_ce | class_balanced | balanced_softmax | equalization | ldam | logit_adjusted"),
    "loss_params": ({}, "parameters of the loss, e.g. {'gamma': 2.0}"),
    "drw_epoch": (None, "deferred re-weighting: epoch at which class-balanced weights switch on (None: off)"),
    "drw_beta": (0.9999, "beta of the DRW class-balanced weights"),
    "sampler": ("instance", "instance | class_balanced | square_root | power | progressive"),
    "sampler_params": ({}, "parameters of the sampler, e.g. {'q': 0.5}"),
    "posthoc": ("none", "evaluation-time adjustment: none | logit_adjust | tau_norm"),
    "posthoc_tau": (1.0, "tau of the post-hoc adjustment"),
    "posthoc_tau_grid": ([], "tau values tried on the validation split, the best one used (empty: posthoc_tau)"),
    # classifier-stage techniques on frozen features (longtail.methods)
    "technique": ("none", "mode linear: none | lws | weight_balancing | ncm | cosine_prototypes | feature_calibration"),
    "technique_params": ({}, "parameters of the technique, e.g. {'k': 2} (longtail.methods.TECHNIQUES)"),
    "tta": ("none", "mode linear: views whose features are averaged, for training and test alike: none | flip"),
    "label": (None, "a free name of a grid entry (a leaderboard row); computes nothing"),
    # optimisation
    "epochs": (30, "training epochs"),
    "crt_epochs": (10, "classifier re-training epochs (mode crt)"),
    "batch_size": (128, "training batch size"),
    "eval_batch_size": (32, "evaluation and feature-extraction batch size (32: fastest on a CPU, measured; raise it on a GPU)"),
    "optimizer": ("sgd", "sgd | adamw"),
    "lr": (0.1, "peak learning rate"),
    "momentum": (0.9, "SGD momentum"),
    "weight_decay": (5e-4, "weight decay"),
    "schedule": ("cosine", "cosine | step | constant"),
    "warmup_epochs": (0, "linear warm-up epochs"),
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
    "seed": (0, "training seed (initialisation, sampling order, augmentation)"),
    "save_checkpoints": (True, "write last.pt and best.pt"),
    "output_dir": (None, "run folder; None: <runs>/<run id>"),
}
DEFAULTS = {k: v[0] for k, v in SCHEMA.items()}

TRAIN_SETS = ("longtailed", "balanced")
MODES = ("linear", "finetune", "crt")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "constant")
POSTHOC = ("none", "logit_adjust", "tau_norm")
VAL_SOURCES = ("split", "unused")
TTA_VIEWS = ("none", "flip")
PRECISIONS = ("auto", "bf16", "fp32")
BALANCED_SIZES = ("matched", "full")


class ParameterError(ValueError):
    """One or more bad parameters; the message lists each with its valid choices."""


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


def validate(params: dict | None = None, *, check_backbone: bool = True) -> dict:
    """Defaults filled in and every value checked; raises ParameterError listing all problems."""
    from . import data, losses, samplers, subsets, transforms

    params = dict(params or {})
    unknown = sorted(set(params) - set(SCHEMA))
    errors = [f"unknown parameter {k!r}" for k in unknown]
    if unknown:
        errors.append("valid parameters: " + ", ".join(SCHEMA))
    resolved = copy.deepcopy(DEFAULTS)
    resolved.update({k: v for k, v in params.items() if k in SCHEMA})
    p = resolved
    _choice(errors, p, "dataset", tuple(data.DATASETS))
    _choice(errors, p, "train_set", TRAIN_SETS)
    _choice(errors, p, "profile", subsets.PROFILES)
    _choice(errors, p, "class_order", subsets.CLASS_ORDERS)
    _choice(errors, p, "balanced_size", BALANCED_SIZES)
    _choice(errors, p, "group_scheme", subsets.GROUP_SCHEMES)
    _choice(errors, p, "on_error", ("raise", "skip"))
    _choice(errors, p, "mode", MODES)
    _choice(errors, p, "optimizer", OPTIMIZERS)
    _choice(errors, p, "schedule", SCHEDULES)
    _choice(errors, p, "posthoc", POSTHOC)
    _choice(errors, p, "precision", PRECISIONS)
    _choice(errors, p, "augment", ("auto", *transforms.AUGMENTS))
    _named_with_params(errors, "loss", p["loss"], p["loss_params"], losses.LOSSES, losses.loss_param_names,
                       lambda: losses.build_loss(p["loss"], [2, 1], **(p["loss_params"] or {})))
    if p["loss"] in losses.LOSSES and p["drw_epoch"] is not None and "weight" not in losses.loss_param_names(p["loss"]):
        takes = [n for n in losses.LOSSES if "weight" in losses.loss_param_names(n)]
        errors.append(f"drw_epoch={p['drw_epoch']!r} with loss {p['loss']!r}: DRW re-weights a loss that takes "
                      f"class weights; use one of {', '.join(takes)} (or drw_epoch None)")
    _named_with_params(errors, "sampler", p["sampler"], p["sampler_params"], samplers.SAMPLERS,
                       samplers.sampler_param_names,
                       lambda: samplers.build_sampler(p["sampler"], [0, 1], 0, **(p["sampler_params"] or {})))
    if check_backbone:
        from .models import ALIASES, is_known_backbone
        if not is_known_backbone(str(p["backbone"])):
            errors.append(f"backbone={p['backbone']!r}: choose one of {', '.join(ALIASES)}, resnet32, "
                          "or any name in timm.list_models()")
    dev = str(p["device"])
    if not (dev in ("auto", "cpu", "cuda", "mps") or dev.startswith("cuda:")):
        errors.append(f"device={dev!r}: choose one of auto, cpu, cuda, cuda:N, mps")
    for key in ("epochs", "batch_size", "eval_batch_size"):
        if not isinstance(p[key], int) or p[key] < (0 if key == "epochs" else 1):
            errors.append(f"{key}={p[key]!r}: must be a positive integer")
    if not (isinstance(p["imbalance_factor"], (int, float)) and p["imbalance_factor"] >= 1):
        errors.append(f"imbalance_factor={p['imbalance_factor']!r}: must be a number >= 1")
    if not 0 <= float(p["val_fraction"]) < 1:
        errors.append(f"val_fraction={p['val_fraction']!r}: must be in [0, 1)")
    _technique_errors(errors, p)
    if errors:
        raise ParameterError("invalid run parameters:\n  " + "\n  ".join(errors))
    p["imbalance_factor"] = float(p["imbalance_factor"])
    return p


def _technique_errors(errors: list, p: dict) -> None:
    """The validation split's source, the techniques of ``longtail.methods``, TTA and τ tuning."""
    from . import methods
    _choice(errors, p, "val_source", VAL_SOURCES)
    _choice(errors, p, "tta", TTA_VIEWS)
    if p["val_source"] == "unused" and float(p["val_fraction"]) > 0:
        errors.append(f"val_fraction={p['val_fraction']!r} with val_source='unused': the validation set is drawn "
                      "from unused training-fold images; set val_fraction 0")
    if not isinstance(p["val_per_class"], int) or p["val_per_class"] < 1:
        errors.append(f"val_per_class={p['val_per_class']!r}: must be a positive integer")
    has_val = p["val_source"] == "unused" or float(p["val_fraction"]) > 0
    _named_with_params(errors, "technique", p["technique"], p["technique_params"], methods.TECHNIQUES,
                       methods.technique_param_names,
                       lambda: methods.technique_params(p["technique"], p["technique_params"]))
    if p["mode"] != "linear":
        for key in ("technique", "tta"):
            if p[key] != "none":
                errors.append(f"{key}={p[key]!r} with mode={p['mode']!r}: works on frozen features; use mode linear")
    if p["technique"] in ("lws", "ncm", "cosine_prototypes") and p["posthoc"] == "tau_norm":
        errors.append(f"posthoc='tau_norm' with technique={p['technique']!r}: τ-norm rescales a linear head's "
                      "weights; use posthoc logit_adjust or none")
    grid = p["posthoc_tau_grid"]
    if not isinstance(grid, list) or not all(isinstance(t, (int, float)) for t in grid):
        errors.append(f"posthoc_tau_grid={grid!r}: must be a list of numbers")
    elif grid and p["posthoc"] == "none":
        errors.append(f"posthoc_tau_grid={grid!r} with posthoc='none': choose posthoc logit_adjust or tau_norm")
    elif grid and not has_val:
        errors.append(f"posthoc_tau_grid={grid!r}: τ is tuned on a validation split; set val_source unused "
                      "(or val_fraction > 0)")
    if (p["technique"] == "weight_balancing" and not has_val
            and len((p["technique_params"] or {}).get("wd_grid", methods.TECHNIQUES["weight_balancing"].params["wd_grid"])) > 1):
        errors.append("technique='weight_balancing' tunes weight decay on a validation split; set val_source unused "
                      "(or val_fraction > 0), or give technique_params {'wd_grid': [one value]}")


def describe() -> str:
    """The parameter table as markdown (README and notebook help)."""
    rows = [f"| `{k}` | `{v[0]!r}` | {v[1]} |" for k, v in SCHEMA.items()]
    return "| parameter | default | meaning |\n|---|---|---|\n" + "\n".join(rows)
