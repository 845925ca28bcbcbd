"""Backbones: any timm model by name, the thesis's four under short aliases, a CIFAR ResNet-32,
and a normalised (cosine) classifier head.

``pretrained``:
- ``None`` / ``"none"``: random initialisation;
- ``"timm"``: timm's ImageNet weights: ``<weights dir>/<timm name>.safetensors`` or ``.pth`` when
  present (``timm_weights_file``: a cluster node without internet works after one copy), else
  timm's hub (needs internet the first time);
- a key of :data:`LOCAL_WEIGHTS` (e.g. ``"inat_insects"``): a state dict file in the weights
  folder (``LT_WEIGHTS_DIR``), with the model arguments and normalisation it needs;
- a path to a state dict (``.pt``/``.pth``); its classifier is dropped and replaced.
"""
from __future__ import annotations

import fnmatch
import functools
import hashlib
import json
import os
import sys
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import config
from .fileio import atomic_write_json

# timm imports huggingface_hub, which imports tqdm.auto: in a Jupyter kernel without ipywidgets that
# warns "IProgress not found" (a red box in every executed notebook) and falls back to the plain text
# bars we want anyway.
warnings.filterwarnings("ignore", message="IProgress not found")

#: the thesis's four backbones, in the order of its appendix (its table numbers follow it)
ALIASES = {
    "mobilenetv2": "mobilenetv2_100",
    "resnet50v2": "resnetv2_50",
    "vit_b16": "vit_base_patch16_224",
    "convnext_base": "convnext_base",
}

# The offline MobileNetV2 state dicts (../shared/README.md): converted from TFLite, hence
# TensorFlow "same" padding and inputs scaled to [-1, 1] (mean = std = 0.5).
LOCAL_WEIGHTS = {
    "inat_insects": dict(file="mobilenetv2_100.coral_inat_insects.pt", arch="mobilenetv2_100",
                         kwargs={"pad_type": "same"}, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
    "imagenet_coral": dict(file="mobilenetv2_100.coral_imagenet.pt", arch="mobilenetv2_100",
                           kwargs={"pad_type": "same"}, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
}
PRETRAINED_CHOICES = ("none", "timm", *LOCAL_WEIGHTS, "<path to a state dict>")


def weights_id(pretrained, weights_dir=None) -> str:
    """What identifies a backbone's weights in a cache key: ``pretrained`` itself for none / timm,
    else the weights file's path, size and modification time (a replaced file changes the key)."""
    if pretrained in (None, "none", "timm"):
        return str(pretrained)
    path = config.weights_dir(weights_dir) / LOCAL_WEIGHTS[pretrained]["file"] if pretrained in LOCAL_WEIGHTS \
        else os.fspath(pretrained)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"pretrained weights {path} not found (pretrained={pretrained!r}; choices: "
                                f"{', '.join(PRETRAINED_CHOICES)}; set LT_WEIGHTS_DIR or weights_dir)") from None
    return f"{path}|{st.st_size}|{st.st_mtime_ns}"


class NormedLinear(nn.Module):
    """Cosine classifier: z_j = <x/|x|, w_j/|w_j|> in [-1, 1] (Cao et al. 2019, LDAM's head).
    Pair it with a loss that scales logits (LDAM's s)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features).uniform_(-1, 1).renorm_(2, 0, 1e-5).mul_(1e5))

    def forward(self, x):
        x = x.flatten(1)  # timm's conv classifiers hand over [N, C, 1, 1]
        return F.normalize(x.float(), dim=1) @ F.normalize(self.weight.float(), dim=1).t()


# --- CIFAR ResNet-32 (He et al. 2016, option-A shortcuts), as in the LDAM-DRW code -------------
class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = cout - cin  # option A: subsample and zero-pad channels, no parameters
        self.stride = stride

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        short = x
        if self.stride != 1 or self.pad:
            short = F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(out + short)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs; n=5 gives ResNet-32 (0.46 M parameters)."""

    def __init__(self, num_classes: int = 10, n: int = 5, widths=(16, 32, 64)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            for j in range(n):
                layers.append(BasicBlock(cin, w, 2 if (i > 0 and j == 0) else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.num_features = cin
        self.fc = nn.Linear(cin, num_classes)
        self.pretrained_cfg = {"classifier": "fc", "mean": (0.4914, 0.4822, 0.4465), "std": (0.2470, 0.2435, 0.2616),
                               "input_size": (3, 32, 32), "crop_pct": 1.0}
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward_features(self, x):
        return self.layers(F.relu(self.bn1(self.conv1(x))))

    def forward_head(self, x, pre_logits: bool = False):
        x = x.mean((2, 3))
        return x if pre_logits else self.fc(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    def get_classifier(self):
        return self.fc

    def reset_classifier(self, num_classes: int):
        self.fc = nn.Linear(self.num_features, num_classes)


def resolve_name(name: str) -> str:
    return ALIASES.get(name, name)


def is_known_backbone(name: str) -> bool:
    arch = resolve_name(name)
    if arch == "resnet32" or name in ALIASES:
        return True
    import timm  # only for names beyond the aliases: importing timm costs ~2 s
    return arch in timm.list_models() or timm.is_model(arch)


def build_model(name: str, num_classes: int, pretrained=None, *, cosine_head: bool = False,
                weights_dir=None, **params) -> nn.Module:
    """A classifier for ``num_classes``; ``params`` go to ``timm.create_model`` (e.g. drop_rate).
    The model carries ``model.data_config`` (mean, std, input_size, crop_pct) for the transforms."""
    arch = resolve_name(name)
    pretrained = None if pretrained in (None, False, "", "none") else pretrained
    if arch == "resnet32":
        if pretrained is not None:
            raise ValueError("resnet32 has no pretrained weights; use pretrained=None")
        model = CifarResNet(num_classes, **params)
        mean, std = model.pretrained_cfg["mean"], model.pretrained_cfg["std"]
    else:
        import timm
        if not is_known_backbone(arch):
            raise ValueError(f"unknown backbone {name!r}; use one of {', '.join(ALIASES)}, resnet32, "
                             "or any name in timm.list_models()")
        local = LOCAL_WEIGHTS.get(pretrained) if isinstance(pretrained, str) else None
        if local is not None and local["arch"] != arch:
            raise ValueError(f"pretrained={pretrained!r} holds {local['arch']} weights, not {arch}")
        kwargs = {**(local["kwargs"] if local else {}), **params}
        offline = timm_weights_file(arch, weights_dir) if pretrained == "timm" else None
        model = timm.create_model(arch, pretrained=(pretrained == "timm" and offline is None), num_classes=num_classes,
                                  **kwargs)
        mean, std = model.pretrained_cfg.get("mean"), model.pretrained_cfg.get("std")
        if offline is not None:
            _load_backbone_state(model, offline)
        elif pretrained not in (None, "timm"):
            path = weights_file(pretrained, weights_dir)
            _load_backbone_state(model, path)
            if local:
                mean, std = local["mean"], local["std"]
    if cosine_head:
        _set_classifier(model, NormedLinear(model.num_features, num_classes))
    cfg = getattr(model, "pretrained_cfg", {})
    model.data_config = {"mean": tuple(mean), "std": tuple(std), "input_size": tuple(cfg.get("input_size", (3, 224, 224))),
                         "crop_pct": float(cfg.get("crop_pct", 0.875))}
    return model


#: the file suffixes ``pretrained: timm`` looks for in the weights folder, in this order
TIMM_WEIGHT_SUFFIXES = (".safetensors", ".pth")


def timm_weights_file(arch: str, weights_dir=None) -> Path | None:
    """``<weights dir>/<timm name>.safetensors`` (or ``.pth``) when present: timm's weights copied for
    offline use (e.g. ``torch.save(timm.create_model(name, pretrained=True).state_dict(), ...)``)."""
    folder = config.weights_dir(weights_dir)
    for suffix in TIMM_WEIGHT_SUFFIXES:
        if (folder / f"{arch}{suffix}").is_file():
            return folder / f"{arch}{suffix}"
    return None


def weights_file(pretrained, weights_dir=None) -> Path | None:
    """The local state-dict file ``pretrained`` names (a :data:`LOCAL_WEIGHTS` key in the weights
    folder, or a path); None for random initialisation or timm's hub.  Raises FileNotFoundError
    naming the path and the setting that changes it when the file is missing."""
    if pretrained in (None, False, "", "none", "timm"):
        return None
    local = LOCAL_WEIGHTS.get(pretrained) if isinstance(pretrained, str) else None
    path = config.weights_dir(weights_dir) / local["file"] if local else Path(pretrained)
    if not path.exists():
        raise FileNotFoundError(f"pretrained weights {path} not found (pretrained={pretrained!r}; choices: "
                                f"{', '.join(PRETRAINED_CHOICES)}; set LT_WEIGHTS_DIR or weights_dir)")
    return path


def _load_backbone_state(model: nn.Module, path: Path) -> None:
    if Path(path).suffix == ".safetensors":
        from safetensors.torch import load_file
        state = load_file(str(path), device="cpu")
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    head = _classifier_name(model)
    state = {k: v for k, v in state.items() if not (head and k.startswith(head + "."))}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (head and k.startswith(head + "."))]
    if missing or unexpected:
        raise ValueError(f"{path} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")


def _classifier_name(model) -> str | None:
    return getattr(model, "pretrained_cfg", {}).get("classifier")


def _set_classifier(model: nn.Module, module: nn.Module) -> None:
    parent, _, attr = (_classifier_name(model) or "fc").rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def make_head(num_features: int, num_classes: int, cosine: bool = False) -> nn.Module:
    return (NormedLinear if cosine else nn.Linear)(num_features, num_classes)


def new_head(model: nn.Module, num_classes: int) -> nn.Module:
    """A fresh classifier of the same kind (linear or cosine) as ``model``'s, on its features."""
    return make_head(model.num_features, num_classes, isinstance(model.get_classifier(), NormedLinear))


def backbone_card(name: str, pretrained=None, weights_dir=None) -> dict:
    """``{"data_config", "num_features"}`` of a backbone, cached on disk, so that a linear-mode run
    on cached features needs neither timm nor the backbone (it saves ~2.5 s a run)."""
    key = hashlib.sha1(f"{resolve_name(name)}|{weights_id(pretrained, weights_dir)}".encode()).hexdigest()[:16]
    path = config.cache_dir() / "models" / f"{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    model = build_model(name, 1, pretrained, weights_dir=weights_dir)
    card = {"backbone": resolve_name(name), "data_config": model.data_config, "num_features": model.num_features}
    atomic_write_json(path, card)
    return json.loads(path.read_text())


# --- structure: what partial fine-tuning and inference know of a backbone's modules ------------
# Declared here, beside the models, as timm models declare their ``feature_info``.

#: backbone names (after ``resolve_name``) whose blocks ``blocks`` knows: timm's EfficientNet family
#: (MobileNetV2 among them) and the CIFAR ResNet-32
BLOCK_BACKBONES = ("mobilenetv2*", "efficientnet*", "tf_efficientnet*", "tf_mobilenetv2*", "resnet32")


def has_blocks(backbone: str) -> bool:
    """Whether ``blocks`` can split backbone ``backbone`` (an alias or a timm name)."""
    return any(fnmatch.fnmatch(resolve_name(backbone), pattern) for pattern in BLOCK_BACKBONES)


def blocks(model: nn.Module) -> list[nn.Module]:
    """The backbone's ``forward_features`` as a list of modules applied in turn: for timm's
    MobileNetV2 / EfficientNet the stem (conv_stem, bn1), the seven stages of ``blocks`` and the head
    convolution (conv_head, bn2), nine blocks; for the CIFAR ResNet-32 the stem and its fifteen blocks."""
    if isinstance(model, CifarResNet):
        return [nn.Sequential(model.conv1, model.bn1, nn.ReLU()), *model.layers]
    if all(hasattr(model, a) for a in ("conv_stem", "bn1", "blocks", "conv_head", "bn2")):
        return [nn.Sequential(model.conv_stem, model.bn1), *model.blocks, nn.Sequential(model.conv_head, model.bn2)]
    raise ValueError(f"mode 'partial' cannot split a {type(model).__name__} into blocks; "
                     f"use a backbone of {', '.join(BLOCK_BACKBONES)}")


def fold_pairs() -> dict[type, tuple[tuple[str, str], ...]]:
    """(convolution, BatchNorm) attribute pairs per module class, as each class's forward runs them:
    the pairs ``inference.fold_batchnorm`` may fold.  timm's classes only once timm is imported (a
    model without them never needs timm)."""
    return _fold_pairs("timm" in sys.modules)


@functools.cache
def _fold_pairs(with_timm: bool) -> dict[type, tuple[tuple[str, str], ...]]:
    pairs = {CifarResNet: (("conv1", "bn1"),), BasicBlock: (("conv1", "bn1"), ("conv2", "bn2"))}
    if with_timm:
        from timm.models import _efficientnet_blocks as eb
        from timm.models.efficientnet import EfficientNet
        pairs.update({
            EfficientNet: (("conv_stem", "bn1"), ("conv_head", "bn2")),
            eb.ConvBnAct: (("conv", "bn1"),),
            eb.DepthwiseSeparableConv: (("conv_s2d", "bn_s2d"), ("conv_dw", "bn1"), ("conv_pw", "bn2")),
            eb.InvertedResidual: (("conv_s2d", "bn_s2d"), ("conv_pw", "bn1"), ("conv_dw", "bn2"),
                                  ("conv_pwl", "bn3")),
            eb.EdgeResidual: (("conv_exp", "bn1"), ("conv_pwl", "bn2")),
        })
    return pairs
