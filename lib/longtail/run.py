"""One training run, from parameters to a complete run folder.

The run folder (``output_dir``) and its files (``params.json``, ``classes.csv``, ``history.csv``,
``predictions.npz``, ``environment.json``, checkpoints, ``metrics.csv`` / ``metrics.json``,
``failure.json``) are described, named and read in ``longtail.rundir``.

A run in steps: ``_prepare`` (data, training sets, the validation split of
``subsets.fit_and_validation_indices``, loss, transforms: ``RunData``), one training path
(``_train_linear`` on cached features; ``_train_finetune``, with ``_retrain_classifier`` for cRT;
``_train_partial``, the last blocks on cached activations of the first, ``longtail.partial``),
then ``_evaluate`` (post-hoc adjustment, metrics, predictions).  What a loss needs (a cosine head,
its logit scale, DRW eligibility) the loss itself declares (``longtail.losses``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import (config, data, engine, features, losses, methods, metrics, models, params as params_mod, partial,
               rundir, samplers, selection, subsets, transforms)
from .arraycache import cached_array
from .imagecache import cache_key
from .rundir import run_id  # noqa: F401  (run_id: public API of longtail.run)


@dataclass
class RunResult:
    output_dir: Path
    params: dict
    metrics: dict
    history: pd.DataFrame
    classes: pd.DataFrame


@dataclass
class RunData:
    """What every path of a run (linear, partial, fine-tune, cRT) and its evaluation share: the
    parameters, the decoded images, the sets and their validation split, the loss and the transforms."""
    p: dict
    device: torch.device
    num_classes: int
    cosine: bool                  # a normalised (cosine) classifier
    data_config: dict             # the backbone's mean, std, input_size, crop_pct
    image_size: int
    cache_size: int               # side of the decoded squares (image_size / crop_pct)
    augment: str                  # the training augmentation, ``auto`` resolved
    train_imgs: object            # decoded training-fold images (uint8 NHWC, memory-mapped); mode linear:
    test_imgs: object             # a function giving them (``data.split_images(on_use=True)``)
    base_train: object            # the training fold (``data.ImageSplit``), unreadable images dropped
    test: object
    sets: object                  # ``selection.RunSets``
    train_idx: np.ndarray         # rows of base_train the run fits on
    val_idx: np.ndarray           # rows of base_train of the validation split
    train_counts: np.ndarray
    groups: np.ndarray
    classes: pd.DataFrame
    loss_fn: torch.nn.Module
    drw: object                   # ``losses.DRWSchedule`` or None
    cfg: object                   # ``engine.TrainConfig``
    eval_tf: object
    train_tf: object

    @property
    def train_y(self) -> torch.Tensor:
        return torch.as_tensor(self.base_train.labels[self.train_idx])

    @property
    def val_y(self) -> torch.Tensor:
        return torch.as_tensor(self.base_train.labels[self.val_idx])

    @staticmethod
    def in_memory(imgs) -> torch.Tensor:
        """The decoded images as one in-memory tensor (random access per batch)."""
        return torch.from_numpy(np.array(imgs))

    def monitor(self, test_x) -> dict:
        """engine.fit's test monitor (``monitor_test``): the balanced test set only (the test split
        also holds a given long-tailed test set); recorded, never used for model selection."""
        if not self.p["monitor_test"]:
            return {}
        return {"monitor_x": test_x[torch.as_tensor(self.sets.test_balanced)],
                "monitor_y": self.test.labels[self.sets.test_balanced]}


@dataclass
class Trained:
    """A trained classifier and what it is evaluated on: ``head`` maps rows of ``test_x`` and
    ``val_x`` (pooled features in every mode) to outputs."""
    head: torch.nn.Module
    history: list
    best_epoch: int
    test_x: torch.Tensor
    val_x: torch.Tensor | None
    #: the run's loss as the head was trained with it (DRW weights in force), where that is not
    #: ``RunData.loss_fn`` itself (the linear path builds its loss on the counts it fits): the own-loss column
    own_loss: torch.nn.Module | None = None
    #: ``tune``'s parameters: {name: (the value given, the candidate chosen on validation)}
    tuned: dict = field(default_factory=dict)


def run_training(params: dict, log=print) -> RunResult:
    """Validate, train, evaluate and write the run folder; see the module docstring."""
    p = params_mod.validate(params)  # every bad value is reported before any work starts
    out = Path(p["output_dir"]) if p["output_dir"] else config.runs_dir() / run_id(p)
    out.mkdir(parents=True, exist_ok=True)
    rundir.start(out)
    rundir.write_json(out, rundir.PARAMS_FILE, p)
    started, started_cpu = time.time(), time.process_time()
    try:
        result = _train_and_evaluate(p, out, log)
    except BaseException as exc:
        rundir.write_json(out, rundir.FAILURE_FILE, {"error": type(exc).__name__, "message": str(exc),
                                                 "traceback": traceback.format_exc()})
        raise
    env = config.environment()
    env["torch_threads"] = torch.get_num_threads()
    env["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    env["wall_s"] = round(time.time() - started, 2)
    env["cpu_s"] = round(time.process_time() - started_cpu, 2)  # all threads of this process
    rundir.write_json(out, rundir.ENVIRONMENT_FILE, env)
    metrics = {**result["metrics"], "wall_s": env["wall_s"], "cpu_s": env["cpu_s"], "run_dir": str(out)}
    pd.DataFrame([metrics]).to_csv(out / rundir.METRICS_CSV, index=False)
    rundir.write_json(out, rundir.RESULT_FILE, metrics)  # last: the run's results are complete
    return RunResult(out, p, metrics, result["history"], result["classes"])


def _train_and_evaluate(p: dict, out: Path, log) -> dict:
    run, model = _prepare(p, out, log)
    if p["mode"] == "linear":
        run, trained = _train_linear(run, out, log)
    elif p["mode"] == "partial":  # the last blocks on cached activations of the first (longtail.partial)
        trained = _train_partial(run, model, out, log)
    else:
        trained = _train_finetune(run, model, out, log)
    hist = pd.DataFrame(trained.history)
    hist.to_csv(out / rundir.HISTORY_FILE, index=False)
    return {"metrics": _evaluate(run, trained, hist, out, log), "history": hist, "classes": run.classes}


def _build_model(p: dict, num_classes: int, cosine: bool) -> torch.nn.Module:
    """The run's backbone and classifier.  Every random consumer is seeded from the run's seed where
    it draws (here: the initial weights; the sampler, augmentation and mixup have their own seeded
    generators), so what ran before (a backbone built only when its features are not cached)
    changes nothing."""
    torch.manual_seed(p["seed"])
    return models.build_model(p["backbone"], num_classes, p["pretrained"], cosine_head=cosine, weights_dir=p["weights_dir"])


def _prepare(p: dict, out: Path, log) -> tuple[RunData, torch.nn.Module | None]:
    """The run's data, sets, validation split, loss and transforms (``classes.csv`` written), and
    the model for every mode but linear (a linear run on cached features needs none)."""

    device = engine.resolve_device(p["device"])
    torch.manual_seed(p["seed"])
    ds = data.load_dataset(p["dataset"], p["data_root"], **(p["dataset_params"] or {}))
    C = ds.num_classes
    # a cosine classifier: as asked, else as the loss asks (LDAM's margins are in cosine units)
    cosine = p["cosine_head"] if p["cosine_head"] is not None else losses.loss_class(p["loss"]).cosine_head
    if p["mode"] == "linear":  # the backbone is built only if its features are not cached yet
        model, dc = None, models.backbone_card(p["backbone"], p["pretrained"], p["weights_dir"])["data_config"]
    else:
        model = _build_model(p, C, cosine)
        dc = model.data_config
    image_size = int(p["image_size"] or dc["input_size"][-1])
    cache_size = transforms.cache_size_for(image_size, dc["crop_pct"])
    augment = p["augment"] if p["augment"] != "auto" else ("cifar" if image_size <= 32 else "light")

    # images, decoded once (a memory-mapped cache); mode linear reads them only to extract features
    # that are not cached yet, so it takes them on use, their checksum verified then
    on_use = p["mode"] == "linear"
    train_imgs, train_kept = data.split_images(ds.train, cache_size, on_error=p["on_error"], on_use=on_use)
    test_imgs, test_kept = data.split_images(ds.test, cache_size, on_error=p["on_error"], on_use=on_use)
    base_train, test = ds.train.subset(train_kept), ds.test.subset(test_kept)

    # The long-tailed profile (or the given long-tailed training set) defines, for both training
    # sets, the head/middle/tail groups and the long-tailed test distribution, so that those columns
    # name the same classes and the same test weighting whichever set a model was trained on.
    sets = selection.run_sets(p, base_train.labels, base_train.part, test.labels, test.part, C)
    if ds.info.get("absent"):
        log(f"classes without a training image: {ds.info['absent']}")
    y_all = base_train.labels
    val_fraction = selection.validation_fraction(p["val_fraction"], p["val_source"], bool(sets.given))
    train_idx, val_idx = subsets.fit_and_validation_indices(
        y_all, sets.train, sets.longtailed, C, val_source=p["val_source"], val_fraction=val_fraction,
        val_per_class=p["val_per_class"], seed=p["subset_seed"], image_keys=base_train.content_keys)
    if not len(val_idx) and (needs := params_mod.tuned_on_validation(p)):
        raise ValueError(f"{needs}, and this run has none ({sets.describe()}; val_fraction {p['val_fraction']!r}); "
                         "set val_fraction > 0 or val_source unused")
    train_counts = subsets.class_counts(y_all[train_idx], C)
    groups = subsets.class_groups(sets.lt_counts, p["group_scheme"], *p["group_thresholds"])
    classes = pd.DataFrame({"class": np.arange(C), "name": ds.class_names, "train_count": train_counts,
                            "longtailed_count": sets.lt_counts,
                            "val_count": subsets.class_counts(y_all[val_idx], C),
                            "test_count": subsets.class_counts(test.labels[sets.test_balanced], C),
                            "test_longtailed_count": subsets.class_counts(test.labels[sets.test_longtailed], C),
                            "group": groups})
    classes.to_csv(out / rundir.CLASSES_FILE, index=False)
    log(f"{p['dataset']}: {C} classes; {p['train_set']} training set {len(train_idx)} images "
        f"(max {train_counts.max()}, min {train_counts.min()}), validation {len(val_idx)}, test {len(sets.test_balanced)} "
        f"balanced + {len(sets.test_longtailed)} long-tailed ({sets.describe()}); "
        f"{p['backbone']} {p['mode']} on {device}")
    log(_validation_text(p, val_fraction, len(val_idx), bool(sets.given)))
    log(_groups_text(p, classes, "test_longtailed" in sets.given))

    loss_fn = losses.build_loss(p["loss"], train_counts.tolist(), **(p["loss_params"] or {}))
    drw = losses.DRWSchedule(train_counts.tolist(), p["drw_epoch"], beta=p["drw_beta"]) if p["drw_epoch"] is not None else None
    channels_last = p["channels_last"]
    eval_tf = transforms.BatchTransform(image_size, dc["mean"], dc["std"], channels_last=channels_last)
    train_tf = transforms.BatchTransform(image_size, dc["mean"], dc["std"], augment=augment,
                                         channels_last=channels_last, seed=p["seed"], randaugment=p["randaugment"])
    run = RunData(p=p, device=device, num_classes=C, cosine=cosine, data_config=dc, image_size=image_size,
                  cache_size=cache_size, augment=augment, train_imgs=train_imgs, test_imgs=test_imgs,
                  base_train=base_train, test=test, sets=sets, train_idx=train_idx, val_idx=val_idx,
                  train_counts=train_counts, groups=groups, classes=classes, loss_fn=loss_fn, drw=drw,
                  cfg=engine.TrainConfig.from_params(p), eval_tf=eval_tf, train_tf=train_tf)
    return run, model


def _validation_text(p: dict, val_fraction: float, n_val: int, given: bool) -> str:
    """The run log's line on the validation split and what model selection does with it."""
    if p["val_source"] == "unused":
        what = f"{n_val} training-fold images no training set uses (val_source unused, up to {p['val_per_class']} a class)"
    elif n_val:
        what = (f"{n_val} images, {val_fraction:g} of each class held out of the {'given ' if given else ''}"
                f"{p['train_set']} training set (val_fraction {p['val_fraction']!r})")
    else:
        why = ("given sets are used as they are" if given and p["val_fraction"] is None else
               f"val_fraction {p['val_fraction']!r}" + (" leaves no class an image to hold out" if val_fraction else ""))
        return f"validation: none ({why}); model selection: the last epoch is kept"
    return f"validation: {what}; model selection: the epoch of best balanced accuracy on it"


def _groups_text(p: dict, classes: pd.DataFrame, given_test: bool) -> str:
    """The run log's line on the head / middle / tail groups and the physical long-tailed test set."""
    sizes = subsets.group_sizes(classes["group"], classes["longtailed_count"], classes["test_longtailed_count"])
    n_test = sum(s["test_images"] for s in sizes.values())
    by_threshold = subsets.class_groups(classes["longtailed_count"], "thresholds", *p["group_thresholds"])
    scheme = {"thirds": "thirds", "thresholds": f"thresholds {p['group_thresholds']}",
              "auto": f"auto: thresholds {p['group_thresholds']}" if len(set(by_threshold)) == 3 else
              f"auto: thirds, thresholds {p['group_thresholds']} leave a group empty"}[p["group_scheme"]]
    rule = "given" if given_test else f"sampled, rule {p['test_longtailed_rule']}"
    return ("groups (" + scheme + "): " + " / ".join(f"{g} {s['classes']}" for g, s in sizes.items()) + " classes; "
            f"long-tailed test set ({rule}): {n_test} images, "
            + " / ".join(f"{g} {s['test_images']}" for g, s in sizes.items())
            + f", tail share {100 * sizes['tail']['test_images'] / max(n_test, 1):.1f} %")


def _train_linear(run: RunData, out: Path, log) -> tuple[RunData, Trained]:
    """Mode linear: a head (or a ``methods`` technique) on the frozen backbone's pooled features,
    extracted once per view and cached (``features``); with ``tta`` (``transforms.TTA_VIEWS``) the
    views' mean.  With ``tune``, one head per combination of its candidates, the one with the best
    validation balanced accuracy kept (ties: the first).  Returns the run with the chosen
    parameters (what evaluation uses) and its trained head."""
    p, C = run.p, run.num_classes
    card = models.backbone_card(p["backbone"], p["pretrained"], p["weights_dir"])

    def backbone():
        m = _build_model(p, C, run.cosine).to(run.device)
        return m.to(memory_format=torch.channels_last) if p["channels_last"] else m

    key_parts = _backbone_key(run)

    views = transforms.TTA_VIEWS[p["tta"]]  # test-time (and training) view averaging

    def request(imgs, split, view):  # (images, transform, cache key) of one split seen in one view
        cached_as = _VIEW_KEYS.get(view, view)  # the centre and flip views keep their earlier cache keys
        key = features.feature_key(images=_images_id(split, run.cache_size), **key_parts,
                                   **({"view": cached_as} if cached_as else {}))
        return imgs, transforms.view_transform(run.eval_tf, view), key  # predict reads the map batch by batch

    # one call for both splits: parallel workers on a cold cache extract different splits at once
    per_view = [torch.from_numpy(f) for f in features.cached_features_many(
        backbone, [request(imgs, split, v) for imgs, split in ((run.train_imgs, run.base_train), (run.test_imgs, run.test))
                   for v in views],
        batch_size=p["eval_batch_size"], device=run.device, precision=p["precision"], channels_last=p["channels_last"],
        log=log)]
    raw_train, raw_test = _views_mean(per_view[:len(views)]), _views_mean(per_view[len(views):])
    candidates = params_mod.tune_candidates(p["tune"])
    if len(candidates) == 1:
        chosen = _with_params(run, candidates[0])
        return chosen, _fit_linear(chosen, raw_train, raw_test, card["num_features"], out, log)
    # ``tune``: one head per combination on the cached features, the best on validation kept
    scores, best = [], 0
    for i, combo in enumerate(candidates):
        trained = _fit_linear(_with_params(run, combo), raw_train, raw_test, card["num_features"], out, log)
        scores.append(_val_balanced_accuracy(trained.head, trained.val_x, run.val_y, C))
        best = i if scores[i] > scores[best] else best
    log("tune: " + "; ".join(f"{_combo_text(c)}: {s:.3f}" for c, s in zip(candidates, scores))
        + f"; chosen on validation: {_combo_text(candidates[best])}")
    chosen = _with_params(run, candidates[best])
    if best != len(candidates) - 1:  # trained again (the same seeds: the same head), its checkpoints last on disk
        trained = _fit_linear(chosen, raw_train, raw_test, card["num_features"], out, log)
    trained.tuned = {k: (p[k], v) for k, v in candidates[best].items()}
    return chosen, trained


def _with_params(run: RunData, combo: dict) -> RunData:
    """``run`` with the parameters ``combo`` (a candidate of ``tune``), its loss and optimisation rebuilt."""
    if not combo:
        return run
    p = {**run.p, **combo}
    return dataclasses.replace(run, p=p, cfg=engine.TrainConfig.from_params(p),
                               loss_fn=losses.build_loss(p["loss"], run.train_counts.tolist(), **(p["loss_params"] or {})))


def _combo_text(combo: dict) -> str:
    return ", ".join(f"{k} {json.dumps(v, sort_keys=True)}" for k, v in combo.items())


def _val_balanced_accuracy(head, val_x, val_y, num_classes: int) -> float:
    with torch.no_grad():
        z = head(val_x).float().numpy()
    return metrics.balanced_accuracy(z, val_y.numpy(), num_classes)


def _fit_linear(run: RunData, raw_train: torch.Tensor, raw_test: torch.Tensor, num_features: int, out: Path,
                log) -> Trained:
    """The head (or technique) of ``run``'s parameters on the view-averaged features ``raw_*``:
    ``methods.prepare_features`` (statistics from the fitting images), the technique's own map,
    then ``methods.train_classifier``."""
    p, C = run.p, run.num_classes
    train_feats, test_feats = methods.prepare_features(raw_train, raw_test, fit_rows=run.train_idx,
                                                       power=p["feature_power"], standardize=p["feature_standardize"])
    to_space = methods.feature_transform(p["technique"], p["technique_params"])
    train_feats, test_feats = to_space(train_feats), to_space(test_feats)

    def new_head():
        return _seeded_head(run, num_features)

    val_x = train_feats[run.val_idx]
    fit = _head_fitter(p, run.cfg, C, run.drw is not None, val_x, run.val_y, out, log, run.monitor(test_feats))
    head, history = methods.train_classifier(p["technique"], p["technique_params"], new_head,
                                             train_feats[run.train_idx], run.train_y, C, fit, seed=p["seed"])
    return Trained(head, history, history[-1]["best_epoch"] if history else -1, test_feats, val_x, fit.own_loss)


def _train_finetune(run: RunData, model: torch.nn.Module, out: Path, log) -> Trained:
    """Modes finetune and crt: the whole model trained on augmented images, the validation epoch
    kept; crt then re-trains the classifier on the features (``_retrain_classifier``).  Evaluated
    through the classifier on the model's pooled features."""
    p = run.p
    _init_bias(model.get_classifier(), run.loss_fn, run.num_classes)
    if p["head_init"] == "linear_probe":
        model.get_classifier().load_state_dict(linear_probe_head(run, model, log).state_dict())
    images_train, images_test = run.in_memory(run.train_imgs), run.in_memory(run.test_imgs)
    history, best, best_epoch = engine.fit(model, images_train[run.train_idx], run.train_y, run.loss_fn,
                                           _run_sampler(run), run.cfg, transform=run.train_tf, eval_transform=run.eval_tf,
                                           val_x=images_train[run.val_idx], val_y=run.val_y,
                                           drw=run.drw, log=log, **run.monitor(images_test))
    _keep_checkpoints(model, best, out, p["save_checkpoints"])

    def features_of(imgs) -> torch.Tensor:
        return torch.from_numpy(engine.predict(model, imgs, run.eval_tf, batch_size=p["eval_batch_size"], device=run.device,
                                               precision=p["precision"], features=True, channels_last=p["channels_last"]))

    val_feats = features_of(images_train[run.val_idx])  # once: cRT selects its epoch on them, evaluation reuses them
    head = model.get_classifier()
    if p["mode"] == "crt":
        torch.manual_seed(p["seed"])
        head = models.new_head(model, run.num_classes)
        history += _retrain_classifier(run, head, features_of(images_train[run.train_idx]), val_feats, out, log)
    val_x = val_feats if len(run.val_idx) else None
    return Trained(head, history, best_epoch, features_of(images_test), val_x)


def _train_partial(run: RunData, model: torch.nn.Module, out: Path, log) -> Trained:
    """Mode partial (``longtail.partial``): the frozen prefix's outputs cached once per image and view,
    the last ``partial_blocks`` blocks and a fresh classifier trained on them; evaluated through the
    classifier on the trained part's pooled centre-view features."""
    p, dc = run.p, run.data_config
    prefix, part = partial.split(model, p["partial_blocks"])
    part.classifier = _seeded_head(run, model.num_features)  # seeded as mode linear's: k = 0 is a linear probe
    if p["head_init"] == "linear_probe":  # on the whole model's features, before any block changes
        part.classifier.load_state_dict(linear_probe_head(run, model, log).state_dict())
    n_blocks = len(models.blocks(model))
    key_parts = dict(_backbone_key(run), frozen_units=n_blocks - p["partial_blocks"], units=n_blocks,
                     precision=p["precision"], batch_size=p["eval_batch_size"], channels_last=p["channels_last"])

    def cached(imgs, split_, rows, view: str, transform) -> torch.Tensor:
        key = features.feature_key(images=_images_id(split_, run.cache_size), rows=partial.rows_id(rows), view=view,
                                   **key_parts)

        def compute(path):
            log(f"partial: frozen prefix ({key_parts['frozen_units']} of {n_blocks} blocks) on {len(rows)} images, "
                f"view {view} (cached as {path.name})")
            return partial.prefix_outputs(prefix, torch.from_numpy(np.asarray(imgs)[np.asarray(rows)]), transform,
                                          batch_size=p["eval_batch_size"], device=run.device, precision=p["precision"],
                                          channels_last=p["channels_last"])
        return torch.from_numpy(cached_array(key, compute, folder=partial.CACHE_FOLDER,
                                             redo="computing the prefix outputs"))

    views = []
    for v in range(p["partial_views"]):  # view v from seed v: shared by every training seed
        torch.manual_seed(v)  # RandAugment draws from the global generator
        tf = transforms.BatchTransform(run.image_size, dc["mean"], dc["std"], augment=run.augment, seed=v,
                                       channels_last=p["channels_last"], randaugment=p["randaugment"])
        views.append(cached(run.train_imgs, run.base_train, run.train_idx,
                            f"{run.augment}{'+randaugment' if p['randaugment'] else ''}/{v}", tf))
    train_x = torch.stack(views, 1)  # [N, views, C, H, W]
    val_x = cached(run.train_imgs, run.base_train, run.val_idx, "centre", run.eval_tf) if len(run.val_idx) \
        else train_x[:0, 0]
    test_x = cached(run.test_imgs, run.test, np.arange(len(run.test)), "centre", run.eval_tf)

    pick = torch.Generator().manual_seed(p["seed"])

    def one_view(batch: torch.Tensor) -> torch.Tensor:  # one cached view per image and step
        choice = torch.randint(batch.shape[1], (batch.shape[0],), generator=pick).to(batch.device)
        return batch[torch.arange(batch.shape[0], device=batch.device), choice].float()

    def centre(batch: torch.Tensor) -> torch.Tensor:
        return batch.float()

    history, best, best_epoch = engine.fit(part, train_x, run.train_y, run.loss_fn, _run_sampler(run), run.cfg,
                                           transform=one_view, eval_transform=centre, val_x=val_x, val_y=run.val_y,
                                           drw=run.drw, log=log, **run.monitor(test_x))
    _keep_checkpoints(part, best, out, p["save_checkpoints"])  # last.pt / best.pt: the trained part only

    def pooled(x) -> torch.Tensor:
        return torch.from_numpy(engine.predict(part, x, centre, batch_size=p["eval_batch_size"], device=run.device,
                                               precision=p["precision"], features=True))
    return Trained(part.get_classifier(), history, best_epoch, pooled(test_x),
                   pooled(val_x) if len(run.val_idx) else None)


#: the optimisation parameters of the probe that starts LP-FT (``head_init: linear_probe``): mode
#: linear's defaults (``params.SCHEMA``), so the probe is the head a default mode linear run trains
PROBE_RECIPE_KEYS = ("epochs", "batch_size", "optimizer", "lr", "momentum", "nesterov", "weight_decay",
                     "decay_norm_and_bias", "schedule", "warmup_epochs", "warmup_unit", "lr_steps", "lr_gamma",
                     "grad_clip", "mixup_alpha", "cutmix_alpha", "freeze_bn", "backbone_lr_scale")


def _seeded_head(run: RunData, num_features: int) -> torch.nn.Module:
    """A fresh classifier on ``num_features`` inputs (cosine where the run's is), drawn from the run's
    seed right here, so the same with a cold or a warm feature cache; its bias as the loss asks."""
    torch.manual_seed(run.p["seed"])
    head = models.make_head(num_features, run.num_classes, run.cosine)
    _init_bias(head, run.loss_fn, run.num_classes)
    return head


def linear_probe_head(run: RunData, model: torch.nn.Module, log) -> torch.nn.Module:
    """The classifier LP-FT starts from (Kumar et al., "Fine-Tuning can Distort Pretrained Features
    and Underperform Out-of-Distribution", ICLR 2022): a linear probe on the frozen pretrained
    model's pooled features (centre view, eval mode) of the fitting images, trained as mode linear
    trains its head (the run's loss, sampler, DRW and seed, mode linear's default optimisation:
    ``PROBE_RECIPE_KEYS``), its epoch chosen on the validation split.  Fine-tuning from it, the
    backbone's first gradients come through a classifier that already fits, not a random one."""
    p, C = run.p, run.num_classes
    probe_p = {**p, **{k: params_mod.DEFAULTS[k] for k in PROBE_RECIPE_KEYS}, "save_checkpoints": False}

    def features_of(rows) -> torch.Tensor:
        return torch.from_numpy(engine.predict(model, np.asarray(run.train_imgs[np.asarray(rows)]), run.eval_tf,
                                               batch_size=p["eval_batch_size"], device=run.device,
                                               precision=p["precision"], features=True, channels_last=p["channels_last"]))
    train_x, val_x = features_of(run.train_idx), features_of(run.val_idx)
    head = _seeded_head(run, train_x.shape[1])  # as mode linear starts its head
    fit = _head_fitter(probe_p, engine.TrainConfig.from_params(probe_p), C, run.drw is not None, val_x, run.val_y,
                       None, lambda line: None, {})
    _, score = fit(head, train_x, run.train_y)
    log(f"head_init linear_probe: the classifier starts from a linear probe ({probe_p['epochs']} epochs"
        + (f", validation balanced accuracy {score:.3f})" if score is not None else ")"))
    return head


def classifier_stage(p: dict) -> dict:
    """The training-configuration changes of a classifier-only second stage (cRT's re-training, a
    technique's second stage): ``crt_epochs`` epochs, no warm-up."""
    return {"epochs": p["crt_epochs"], "warmup_epochs": 0}


def _retrain_classifier(run: RunData, head, train_feats, val_feats, out: Path, log) -> list:
    """Classifier re-training (cRT; Kang et al., ICLR 2020): a fresh classifier on the fine-tuned
    model's frozen features, class-balanced sampling and CE, ``crt_epochs`` epochs; the validation
    epoch is loaded into ``head``.  Returns its history rows (stage ``crt``)."""
    p = run.p
    crt_cfg = engine.TrainConfig.from_params({**p, **classifier_stage(p)})
    crt_sampler = samplers.build_sampler("class_balanced", run.train_y.numpy(), p["seed"])
    crt_loss = losses.build_loss("ce", run.train_counts.tolist())
    more, best, _ = engine.fit(head, train_feats, run.train_y, crt_loss, crt_sampler, crt_cfg,
                               val_x=val_feats, val_y=run.val_y, log=log)
    head.load_state_dict(best)
    if p["save_checkpoints"]:
        torch.save(head.state_dict(), out / rundir.CRT_HEAD_FILE)
    return [{**r, "stage": "crt"} for r in more]


def _run_sampler(run: RunData):
    p = run.p
    return samplers.build_sampler(p["sampler"], run.train_y.numpy(), p["seed"], **(p["sampler_params"] or {}))


def _evaluate(run: RunData, trained: Trained, hist: pd.DataFrame, out: Path, log) -> dict:
    """Test (balanced, long-tailed weighted and sampled, groups) and validation metrics of the
    trained classifier, with the post-hoc adjustment (τ chosen on the validation split when a grid
    is given); writes ``predictions.npz``; returns the run's summary and metrics."""
    p, C, loss_fn, test = run.p, run.num_classes, run.loss_fn, run.test
    # A cosine head outputs cosines in [-1, 1]; the loss's logit scale (LDAM's s) makes them the
    # logits the loss sees, so test loss and calibration mean what they say.
    scale = loss_fn.logit_scale if run.cosine else 1.0

    def logits_of(x, tau):
        head = methods.tau_normalized(trained.head, tau) if p["posthoc"] == "tau_norm" else trained.head
        z = engine.predict(head, x, batch_size=p["eval_batch_size"], device=run.device, precision="fp32")
        if run.cosine:
            z = z * scale
        if p["posthoc"] == "logit_adjust":
            z = losses.logit_adjust(z, run.train_counts.tolist(), tau=tau)
        return z

    val_y = run.val_y.numpy()
    tau = p["posthoc_tau"]
    if p["posthoc_tau_grid"]:  # τ chosen on the validation split, never on the test fold
        tau, tau_scores = methods.best_on_validation(p["posthoc_tau_grid"], lambda t: logits_of(trained.val_x, t),
                                                     val_y, C)
        log(f"posthoc {p['posthoc']}: tau {tau} chosen on validation (balanced accuracy "
            + ", ".join(f"{t}: {s:.3f}" for t, s in tau_scores.items()) + ")")
    logits = logits_of(trained.test_x, tau)
    has_val = len(run.val_idx) > 0
    val_logits = logits_of(trained.val_x, tau) if has_val else np.zeros((0, C), np.float32)
    activation = getattr(loss_fn, "activation", "softmax")  # a sigmoid-trained model's own probabilities
    tb, tl = run.sets.test_balanced, run.sets.test_longtailed
    lt_counts = run.sets.lt_counts
    results = metrics.evaluate(logits[tb], test.labels[tb], lt_counts, run.groups, activation=activation)
    results["longtailed_sampled"] = metrics.split_metrics(logits[tl], test.labels[tl], C, activation=activation)
    results.update(metrics.evaluate_physical(logits[tb], test.labels[tb], None, run.groups, activation=activation,
                                             own_loss=lambda z, y: _own_loss(loss_fn if trained.own_loss is None else trained.own_loss, z / scale, y),
                                             lt_logits=logits[tl], lt_labels=test.labels[tl]))
    flat = metrics.flatten(results)
    if not all(math.isfinite(v) for k, v in flat.items() if k.endswith("/acc1") and k.split("/")[0] in ("balanced", "longtailed")):
        raise FloatingPointError("non-finite test accuracy; see predictions.npz")
    ids = np.asarray(test.paths if test.paths is not None else np.arange(len(test)), dtype=str)
    np.savez(out / rundir.PREDICTIONS_FILE, logits=logits[tb].astype(np.float32), labels=test.labels[tb],
                        lt_weight=subsets.longtailed_test_weights(test.labels[tb], lt_counts), ids=ids[tb],
                        lt_logits=logits[tl].astype(np.float32), lt_labels=test.labels[tl], lt_ids=ids[tl],
                        activation=activation, val_logits=val_logits.astype(np.float32), val_labels=val_y,
                        val_ids=_ids(run.base_train, run.val_idx), train_ids=_ids(run.base_train, run.train_idx))
    summary = {k: p[k] for k in ("dataset", "train_set", "imbalance_factor", "backbone", "pretrained", "mode",
                                 "loss", "sampler", "drw_epoch", "posthoc", "seed", "subset_seed", "epochs",
                                 "eval_protocol")}
    given = {**p, **{k: v for k, (v, _) in trained.tuned.items()}}  # the run's parameters as given
    summary["loss_params"] = json.dumps(given["loss_params"] or {}, sort_keys=True)
    for k in ("technique", "tta", "val_source", "label"):
        summary[k] = p[k]
    summary["technique_params"] = json.dumps(given["technique_params"] or {}, sort_keys=True)
    for k, (_, chosen) in trained.tuned.items():  # a metric, not a parameter: seeds may choose differently
        summary[f"tuned/{k}"] = json.dumps(chosen, sort_keys=True)
    summary["posthoc_tau_used"] = float(tau)
    if has_val:
        summary["val/balanced_acc"] = metrics.balanced_accuracy(val_logits, val_y, C)
    summary.update(best_epoch=trained.best_epoch, train_images=int(len(run.train_idx)), num_classes=C,
                   device=str(run.device), image_size=run.image_size)
    if "monitor_acc" in hist:  # the best test epoch, as papers that select on the test set report it
        summary.update({"monitor/best_test_acc1": float(hist["monitor_acc"].max()),
                        "monitor/best_test_epoch": int(hist.loc[hist["monitor_acc"].idxmax(), "epoch"])})
    return {**summary, **flat}


def _init_bias(classifier, loss_fn, num_classes: int) -> None:
    """The loss's classifier-bias initialisation (Cui et al.'s b = -log(C - 1) for a sigmoid loss)."""
    value = loss_fn.initial_bias(num_classes) if hasattr(loss_fn, "initial_bias") else None
    if value is not None and getattr(classifier, "bias", None) is not None:
        with torch.no_grad():
            classifier.bias.fill_(value)


def _own_loss(loss_fn, logits: np.ndarray, labels: np.ndarray) -> float:
    """The method's own training loss (as trained: DRW weights in force, no random drops) on test logits."""
    loss_fn.eval()
    with torch.no_grad():
        return float(loss_fn(torch.as_tensor(logits, dtype=torch.float64), torch.as_tensor(labels)).item())


def _keep_checkpoints(module, best_state, out: Path, save: bool) -> None:
    """Write last.pt (the module as trained) and best.pt, then load the best state into the module."""
    if save:
        torch.save(module.state_dict(), out / rundir.LAST_CHECKPOINT)
        torch.save(best_state, out / rundir.BEST_CHECKPOINT)
    module.load_state_dict(best_state)


def _backbone_key(run: RunData) -> dict:
    """What a frozen backbone's outputs on the run's decoded images depend on: the cache key's parts
    (features of mode linear, prefix outputs of mode partial)."""
    p, dc = run.p, run.data_config
    key = dict(backbone=models.resolve_name(p["backbone"]), weights=models.weights_id(p["pretrained"], p["weights_dir"]),
               image_size=run.image_size, cache_size=run.cache_size, mean=dc["mean"], std=dc["std"])
    if p["pretrained"] in (None, "none"):  # a randomly initialised backbone: its outputs depend on the seed
        key["init_seed"] = p["seed"]
    return key


def _images_id(split, cache_size: int) -> str:
    if split.paths is not None:
        return cache_key(split.paths, cache_size)
    return hashlib.sha1(np.ascontiguousarray(split.images).tobytes()).hexdigest()[:16] + f"_{cache_size}"


def _ids(split, idx) -> np.ndarray:
    """Image ids (paths, else positions) of rows ``idx`` of a split."""
    return np.asarray(np.asarray(split.paths)[idx] if split.paths is not None else idx, dtype=str)


#: the feature-cache key's ``view`` of a TTA view where it differs from the view's name
_VIEW_KEYS = {"centre": None, "centre_flip": "flip"}


def _views_mean(features: list[torch.Tensor]) -> torch.Tensor:
    """The mean of the views' features; one view's are themselves (the same values: x / 1 = x), without
    the reduction over a stacked copy (0.02 s for EU Moths' training features)."""
    return features[0] if len(features) == 1 else torch.stack(features).mean(0)


def _head_fitter(p: dict, cfg, num_classes: int, use_drw: bool, val_x, val_y, out: Path, log, monitor: dict):
    """``fit(module, x, y, **overrides)`` for ``methods.train_classifier``: the run's loss (built on
    the counts of ``y``, which a feature augmentation may change), sampler, DRW and optimiser, with
    model selection on the validation split (``monitor``: engine.fit's test monitor, recorded only);
    the chosen state is loaded and saved (best.pt, last.pt).
    Returns (history rows, validation balanced accuracy of the chosen epoch or None)."""

    def fit(module, x, y, *, loss=None, loss_params=None, sampler=None, stage_epochs=False, weight_decay=None,
            on_step=None):
        counts = subsets.class_counts(y.numpy(), num_classes).tolist()
        loss_fn = losses.build_loss(loss or p["loss"], counts,
                                    **((loss_params or {}) if loss is not None else (p["loss_params"] or {})))
        drw = losses.DRWSchedule(counts, p["drw_epoch"], beta=p["drw_beta"]) if use_drw and loss is None else None
        smp = samplers.build_sampler(sampler or p["sampler"], y.numpy(), p["seed"],
                                     **({} if sampler else (p["sampler_params"] or {})))
        c = dataclasses.replace(cfg, **(classifier_stage(p) if stage_epochs else {}),
                                **({"weight_decay": weight_decay} if weight_decay is not None else {}))
        history, best, best_epoch = engine.fit(module, x, y, loss_fn, smp, c, val_x=val_x, val_y=val_y, drw=drw,
                                               log=log, on_step=on_step, **monitor)
        _keep_checkpoints(module, best, out, p["save_checkpoints"])
        if loss is None:  # the run's own loss, as trained (a second stage's other loss is not the run's)
            fit.own_loss = loss_fn
        score = history[best_epoch].get("val_balanced_acc") if 0 <= best_epoch < len(history) else None
        return history, score

    def loss_on(y):  # the run's loss on the counts of y, for a technique with its own optimiser
        return losses.build_loss(p["loss"], subsets.class_counts(y.numpy(), num_classes).tolist(), **(p["loss_params"] or {}))

    fit.own_loss, fit.loss_on = None, loss_on
    fit.val_score = lambda module: _val_balanced_accuracy(module, val_x, val_y, num_classes)
    return fit
