"""Partial fine-tuning on a CPU (``mode: partial``): the first units of the backbone frozen and their
outputs cached once, the last ``partial_blocks`` units and the classifier trained on them.

A backbone is a sequence of units whose composition is its ``forward_features`` (``units``): for
timm's MobileNetV2 / EfficientNet the stem (conv_stem, bn1), the seven stages of ``blocks`` and the
head convolution (conv_head, bn2), nine units; for the CIFAR ResNet-32 the stem and its fifteen
blocks.  ``partial_blocks = k`` trains the last k units; on MobileNetV2 k = 1 is conv_head (the 1×1
convolution to 1,280 channels), k = 2 adds the last stage (blocks[6]), k = 3 blocks[5] too; k = 0
trains the classifier alone on the frozen pooled features (linear probing on augmented views).

The frozen prefix runs once per image and view, in eval mode: ``partial_views`` augmented views of
every training image (the run's ``augment``; view v drawn from seed v, so every training seed and
every run on the same images share them) and the centre view of every validation and test image.
Its outputs are stored in fp16 in ``<cache>/partial/<key>.npy`` with the checksum conventions of the
feature cache (``features.cached_array``: verified on every read, a bad entry named and computed
again).  Training draws one cached view per image and step (seeded by the run's seed); model
selection, the test monitor and evaluation run through the same prefix on the centre view.  The
gradient never enters the prefix, so its cost is paid once, and an epoch costs the tail's forward
and backward only.  This is the decoupled idea of Kang et al. (ICLR 2020) moved a few blocks down:
the representation's last blocks adapt to the target data, the rest stays as pre-trained.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

#: backbone names (after ``models.resolve_name``) whose units this module knows: timm's
#: EfficientNet family (MobileNetV2 among them) and the CIFAR ResNet-32
PARTIAL_BACKBONES = ("mobilenetv2*", "efficientnet*", "tf_efficientnet*", "tf_mobilenetv2*", "resnet32")
CACHE_FOLDER = "partial"


def supports(backbone: str) -> bool:
    """Whether ``units`` can split backbone ``backbone`` (an alias or a timm name)."""
    import fnmatch
    from .models import resolve_name
    return any(fnmatch.fnmatch(resolve_name(backbone), pattern) for pattern in PARTIAL_BACKBONES)


def units(model: nn.Module) -> list[nn.Module]:
    """The backbone's ``forward_features`` as a list of modules applied in turn (module docstring)."""
    from .models import CifarResNet
    if isinstance(model, CifarResNet):
        return [nn.Sequential(model.conv1, model.bn1, nn.ReLU()), *model.layers]
    if all(hasattr(model, a) for a in ("conv_stem", "bn1", "blocks", "conv_head", "bn2")):
        return [nn.Sequential(model.conv_stem, model.bn1), *model.blocks, nn.Sequential(model.conv_head, model.bn2)]
    raise ValueError(f"mode 'partial' cannot split a {type(model).__name__} into blocks; "
                     f"use a backbone of {', '.join(PARTIAL_BACKBONES)}")


class PartialModel(nn.Module):
    """The trained part: the last units, the backbone's pooling and the classifier, on cached prefix
    outputs (fp16 or fp32).  ``forward_features`` / ``forward_head`` as timm's, for ``engine``."""

    def __init__(self, tail: list[nn.Module], pool: nn.Module, classifier: nn.Module):
        super().__init__()
        self.tail = nn.Sequential(*tail)
        self.pool = pool
        self.classifier = classifier

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(x.float())

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pool(x)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.classifier


class _MeanPool(nn.Module):
    def forward(self, x):
        return x.mean((2, 3))


def split(model: nn.Module, trained_units: int) -> tuple[nn.Sequential, PartialModel]:
    """(frozen prefix, trained part) of ``model`` with its last ``trained_units`` units trained;
    ``part(prefix(x))`` is ``model(x)`` (the same modules, shared).  ValueError for a k out of range."""
    parts = units(model)
    if not isinstance(trained_units, int) or not 0 <= trained_units < len(parts):
        raise ValueError(f"partial_blocks={trained_units!r}: {type(model).__name__} has {len(parts)} units "
                         f"(stem, blocks, head convolution); train 0 to {len(parts) - 1} of them")
    cut = len(parts) - trained_units
    prefix = nn.Sequential(*parts[:cut])
    pool = model.global_pool if hasattr(model, "global_pool") else _MeanPool()
    return prefix, PartialModel(parts[cut:], pool, model.get_classifier())


@torch.no_grad()
def prefix_outputs(prefix: nn.Module, images: torch.Tensor, transform, *, batch_size: int = 32,
                   device="cpu", precision: str = "auto", channels_last: bool = False) -> np.ndarray:
    """fp16 outputs [N, C, H, W] of the frozen ``prefix`` (eval mode) on ``transform``ed uint8 images."""
    from .engine import autocast
    device = torch.device(device)
    prefix.eval().to(device)
    if channels_last:
        prefix.to(memory_format=torch.channels_last)
    outs = []
    for start in range(0, len(images), batch_size):
        xb = transform(images[start:start + batch_size].to(device))
        with autocast(device, precision):
            outs.append(prefix(xb).to(torch.float16).contiguous().cpu())
    return torch.cat(outs).numpy()


def _rows_id(rows) -> str:
    return hashlib.sha1(np.ascontiguousarray(np.asarray(rows, dtype=np.int64)).tobytes()).hexdigest()[:16]


def train(run, model: nn.Module, out: Path, log):
    """Mode partial for a prepared run (``run.RunData``) and its built ``model``; returns
    ``run.Trained`` (the classifier, evaluated on the trained part's pooled centre-view features)."""
    from . import engine, features, models, transforms
    from .run import Trained, _images_id, _init_bias, _keep_checkpoints, _run_sampler, linear_probe_head
    p, dc = run.p, run.data_config
    prefix, part = split(model, p["partial_blocks"])
    torch.manual_seed(p["seed"])  # a fresh classifier seeded as mode linear's: k = 0 is a linear probe
    part.classifier = models.make_head(model.num_features, run.num_classes, run.cosine)
    _init_bias(part.get_classifier(), run.loss_fn, run.num_classes)
    if p["head_init"] == "linear_probe":  # on the whole model's features, before any unit changes
        part.classifier.load_state_dict(linear_probe_head(run, model, log).state_dict())
    n_units = len(units(model))
    key_parts = dict(backbone=models.resolve_name(p["backbone"]), weights=models.weights_id(p["pretrained"], p["weights_dir"]),
                     image_size=run.image_size, cache_size=run.cache_size, mean=dc["mean"], std=dc["std"],
                     frozen_units=n_units - p["partial_blocks"], units=n_units, precision=p["precision"],
                     batch_size=p["eval_batch_size"], channels_last=p["channels_last"])
    if p["pretrained"] in (None, "none"):  # a randomly initialised prefix depends on the seed
        key_parts["init_seed"] = p["seed"]

    def cached(imgs, split_, rows, view: str, transform) -> torch.Tensor:
        key = features.feature_key(images=_images_id(split_, run.cache_size), rows=_rows_id(rows), view=view, **key_parts)

        def compute(path):
            log(f"partial: frozen prefix ({key_parts['frozen_units']} of {n_units} units) on {len(rows)} images, "
                f"view {view} (cached as {path.name})")
            return prefix_outputs(prefix, torch.from_numpy(np.asarray(imgs)[np.asarray(rows)]), transform,
                                  batch_size=p["eval_batch_size"], device=run.device, precision=p["precision"],
                                  channels_last=p["channels_last"])
        return torch.from_numpy(features.cached_array(key, compute, folder=CACHE_FOLDER, redo="computing the prefix outputs"))

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
