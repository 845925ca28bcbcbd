"""Partial fine-tuning on a CPU (``mode: partial``): the first blocks of the backbone frozen and their
outputs cached once, the last ``partial_blocks`` blocks and the classifier trained on them.

A backbone is a sequence of blocks whose composition is its ``forward_features`` (``models.blocks``:
for timm's MobileNetV2 nine, the stem, seven stages and the head convolution).  ``partial_blocks = k``
trains the last k blocks; on MobileNetV2 k = 1 is conv_head (the 1×1 convolution to 1,280 channels),
k = 2 adds the last stage (blocks[6]), k = 3 blocks[5] too; k = 0 trains the classifier alone on the
frozen pooled features (linear probing on augmented views).  This module splits the model
(``split``) and runs the frozen prefix (``prefix_outputs``); ``run`` trains it (mode partial).

The frozen prefix runs once per image and view, in eval mode: ``partial_views`` augmented views of
every training image (the run's ``augment``; view v drawn from seed v, so every training seed and
every run on the same images share them) and the centre view of every validation and test image.
Its outputs are stored in fp16 in ``<cache>/partial/<key>.npy`` with the checksum conventions of the
feature cache (``arraycache.cached_array``: verified on every read, a bad entry named and computed
again).  Training draws one cached view per image and step (seeded by the run's seed); model
selection, the test monitor and evaluation run through the same prefix on the centre view.  The
gradient never enters the prefix, so its cost is paid once, and an epoch costs the tail's forward
and backward only.  This is the decoupled idea of Kang et al. (ICLR 2020) moved a few blocks down:
the representation's last blocks adapt to the target data, the rest stays as pre-trained.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn as nn

from . import models
from .engine import autocast

CACHE_FOLDER = "partial"  # under the cache folder: the frozen prefix's outputs


class PartialModel(nn.Module):
    """The trained part: the last blocks, the backbone's pooling and the classifier, on cached prefix
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


def split(model: nn.Module, trained_blocks: int) -> tuple[nn.Sequential, PartialModel]:
    """(frozen prefix, trained part) of ``model`` with its last ``trained_blocks`` blocks trained;
    ``part(prefix(x))`` is ``model(x)`` (the same modules, shared).  ValueError for a k out of range."""
    parts = models.blocks(model)
    if not isinstance(trained_blocks, int) or not 0 <= trained_blocks < len(parts):
        raise ValueError(f"partial_blocks={trained_blocks!r}: {type(model).__name__} has {len(parts)} blocks "
                         f"(stem, blocks, head convolution); train 0 to {len(parts) - 1} of them")
    cut = len(parts) - trained_blocks
    prefix = nn.Sequential(*parts[:cut])
    pool = model.global_pool if hasattr(model, "global_pool") else _MeanPool()
    return prefix, PartialModel(parts[cut:], pool, model.get_classifier())


@torch.no_grad()
def prefix_outputs(prefix: nn.Module, images: torch.Tensor, transform, *, batch_size: int = 32,
                   device="cpu", precision: str = "auto", channels_last: bool = False) -> np.ndarray:
    """fp16 outputs [N, C, H, W] of the frozen ``prefix`` (eval mode) on ``transform``ed uint8 images."""
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


def rows_id(rows) -> str:
    """A short hash of a row selection (the prefix cache's key names the images it holds)."""
    return hashlib.sha1(np.ascontiguousarray(np.asarray(rows, dtype=np.int64)).tobytes()).hexdigest()[:16]
