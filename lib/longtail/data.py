"""Data sets: each loader returns images (files or an in-memory uint8 array), integer labels and
class names, as an :class:`ImageDataset` with a ``train`` and a ``test`` split.

| name          | source                                                                        |
|---------------|-------------------------------------------------------------------------------|
| ``eu_moths``  | the published EU Moths layout under ``<root>/eu-moths`` (or ``root`` itself);  |
|               | downloaded from GitHub cvjena/eu-moths-dataset when missing and online         |
| ``cifar10``   | ``<root>/cifar10-jpg.tar.gz`` or a ``train/<class>/*.jpg`` + ``test/...`` tree; |
|               | else torchvision's ``CIFAR10(download=True)`` when online                      |
| ``imagefolder`` | any ``root/<class>/*`` tree, with ``train/`` and ``test/`` subfolders or a   |
|               | seeded stratified split (``test_fraction``)                                    |
| ``synthetic`` | a tiny generated set of coloured patterns, for fast tests                      |

Archives are checked (sha256) and extracted once into the cache folder, never beside the data.
"""
from __future__ import annotations

import os
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import config
from .fileio import atomic_write_text, download, sha256
from .subsets import longtail_counts, stratified_split  # noqa: F401  (longtail_counts: public API)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
CIFAR10_ARCHIVE = "cifar10-jpg.tar.gz"
CIFAR10_SHA256 = "ff937e22f2e42c12741508e6351cd54497a0e81afe873c5dc0592ff3b9aa0d70"
EU_MOTHS_URL = "https://github.com/cvjena/eu-moths-dataset/archive/fecaa38.zip"


@dataclass
class ImageSplit:
    """One split: ``labels`` and either image ``paths`` or in-memory ``images`` (uint8 NHWC)."""
    labels: np.ndarray
    paths: list[str] | None = None
    images: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices) -> "ImageSplit":
        indices = np.asarray(indices, dtype=np.int64)
        return ImageSplit(
            labels=self.labels[indices],
            paths=None if self.paths is None else [self.paths[i] for i in indices],
            images=None if self.images is None else self.images[indices],
        )


@dataclass
class ImageDataset:
    name: str
    class_names: list[str]
    train: ImageSplit
    test: ImageSplit
    info: dict = field(default_factory=dict)  # source, citation: what a report states

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# ---------------------------------------------------------------------------------------------
def load_eu_moths(root=None, train_folds=(1, 2, 3), test_folds=(0,), **_) -> ImageDataset:
    """EU Moths (Korsch, Bodesheim, Denzler, INFORMATIK 2021): 200 species, 2,205 images.
    ``tr_ID.txt``: 0 = test fold, 1–3 = training folds."""
    base = _find_eu_moths(config.data_root(root))
    files = [line.split(maxsplit=1)[1] for line in _lines(base / "images.txt")]
    labels = np.array([int(x) for x in _lines(base / "labels.txt")], dtype=np.int64)
    folds = np.array([int(x) for x in _lines(base / "tr_ID.txt")], dtype=np.int64)
    names = _lines(base / "class_names.txt")
    if not (len(files) == len(labels) == len(folds)):
        raise ValueError(f"{base}: images.txt, labels.txt and tr_ID.txt differ in length")
    paths = [str(base / "images" / f) for f in files]
    split = lambda sel: ImageSplit(labels[sel], [paths[i] for i in np.flatnonzero(sel)])  # noqa: E731
    return ImageDataset(
        "eu_moths", names, split(np.isin(folds, train_folds)), split(np.isin(folds, test_folds)),
        info={"source": str(base), "citation": "Korsch, Bodesheim, Denzler, Deep Learning Pipeline for "
              "Automated Visual Moth Monitoring, INFORMATIK 2021, doi:10.18420/informatik2021-036"})


def _find_eu_moths(root: Path) -> Path:
    for candidate in (root / "eu-moths", root):
        if (candidate / "images.txt").exists():
            return candidate
    cached = config.cache_dir() / "eu-moths"
    found = list(cached.glob("*/images.txt")) if cached.exists() else []
    if found:
        return found[0].parent
    try:  # online: the dataset's public repository, extracted into the cache
        archive = download(EU_MOTHS_URL, cached / "eu-moths.zip")
    except OSError as exc:
        raise FileNotFoundError(
            f"EU Moths not found under {root} (looked for {root / 'eu-moths' / 'images.txt'}) and the "
            f"download from {EU_MOTHS_URL} failed ({exc}). Set LT_DATA_ROOT or the data_root parameter.") from exc
    with zipfile.ZipFile(archive) as z:
        z.extractall(cached)
    return next(cached.glob("*/images.txt")).parent


def load_cifar10(root=None, **_) -> ImageDataset:
    """CIFAR-10 (Krizhevsky 2009) from a local JPEG tree or archive, or torchvision's download."""
    root = config.data_root(root)
    for tree in (root / "cifar10", root / "cifar10-jpg", root):
        if (tree / "train").is_dir() and (tree / "test").is_dir():
            return _with_info(load_imagefolder(tree, name="cifar10"), tree)
    archive = root / CIFAR10_ARCHIVE
    if archive.exists():
        return _with_info(load_imagefolder(extract_archive(archive, CIFAR10_SHA256), name="cifar10"), archive)
    return _cifar10_torchvision()


def _with_info(ds: ImageDataset, source) -> ImageDataset:
    ds.info = {"source": str(source), "citation": "Krizhevsky, Learning Multiple Layers of Features from "
               "Tiny Images, 2009", "note": "JPEG re-encoding (quality 75) of CIFAR-10"}
    return ds


def _cifar10_torchvision() -> ImageDataset:
    from torchvision.datasets import CIFAR10
    folder = config.cache_dir() / "torchvision"
    try:
        train, test = (CIFAR10(folder, train=t, download=True) for t in (True, False))
    except Exception as exc:
        raise FileNotFoundError(f"CIFAR-10 not found under {config.data_root()} (looked for "
                                f"{CIFAR10_ARCHIVE} or a train/ test/ tree) and torchvision's download failed "
                                f"({exc}). Set LT_DATA_ROOT or the data_root parameter.") from exc
    as_split = lambda d: ImageSplit(np.asarray(d.targets, dtype=np.int64), images=np.asarray(d.data))  # noqa: E731
    return ImageDataset("cifar10", list(train.classes), as_split(train), as_split(test),
                        info={"source": "torchvision CIFAR10", "citation": "Krizhevsky 2009"})


def extract_archive(archive: Path, expected_sha256: str | None = None) -> Path:
    """Extract a .tar.gz/.zip once into ``<cache>/extracted/<name>``; a marker file written last
    says the extraction is complete, so an interrupted one is redone."""
    archive = Path(archive)
    name = archive.name.removesuffix(".tar.gz").removesuffix(".tgz").removesuffix(".zip")
    dest = config.cache_dir() / "extracted" / name
    marker = dest / ".complete"
    if marker.exists():
        return dest
    if expected_sha256 and (actual := sha256(archive)) != expected_sha256:
        raise ValueError(f"{archive}: sha256 {actual} differs from the expected {expected_sha256}")
    tmp = dest.with_name(f".{name}.tmp{os.getpid()}")
    if archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as z:
            z.extractall(tmp)
    else:
        with tarfile.open(archive) as t:
            t.extractall(tmp, filter="data")
    if dest.exists():
        import shutil
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    atomic_write_text(marker, archive.name + "\n")
    return dest


def load_imagefolder(root=None, *, name="imagefolder", test_fraction=0.2, split_seed=0, **_) -> ImageDataset:
    """``root/<class>/<image>``: with ``train/`` and ``test/`` subfolders they are the splits,
    else a seeded stratified split holds out ``test_fraction`` of each class.  Class names are the
    sorted folder names (of ``train/`` where it exists)."""
    root = Path(root) if root is not None else config.data_root()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    if (root / "train").is_dir() and (root / "test").is_dir():
        names = _class_folders(root / "train")
        train, test = (_scan(root / s, names) for s in ("train", "test"))
    else:
        names = _class_folders(root)
        everything = _scan(root, names)
        rest, held = stratified_split(everything.labels, test_fraction, seed=split_seed)
        train, test = everything.subset(rest), everything.subset(held)
    return ImageDataset(name, names, train, test, info={"source": str(root)})


def _class_folders(root: Path) -> list[str]:
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise FileNotFoundError(f"{root} holds no class folders (expected {root}/<class>/<image>)")
    return names


def _scan(root: Path, names: list[str]) -> ImageSplit:
    paths, labels = [], []
    for label, cls in enumerate(names):
        folder = root / cls
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
        paths += [str(p) for p in files]
        labels += [label] * len(files)
    return ImageSplit(np.asarray(labels, dtype=np.int64), paths)


def load_synthetic(root=None, *, num_classes=6, train_per_class=40, test_per_class=10, image_size=16,
                   noise=0.6, seed=0, **_) -> ImageDataset:
    """A tiny learnable set: each class is a fixed random colour pattern plus pixel noise."""
    rng = np.random.default_rng(seed)
    prototypes = rng.uniform(0, 1, size=(num_classes, 4, 4, 3))

    def make(per_class):
        labels = np.repeat(np.arange(num_classes), per_class)
        base = prototypes[labels].repeat(image_size // 4, axis=1).repeat(image_size // 4, axis=2)
        x = base + noise * rng.standard_normal(base.shape) * 0.5
        return ImageSplit(labels.astype(np.int64), images=(np.clip(x, 0, 1) * 255).astype(np.uint8))

    return ImageDataset("synthetic", [f"class_{c}" for c in range(num_classes)], make(train_per_class),
                        make(test_per_class), info={"source": f"generated (seed {seed})"})


DATASETS = {
    "eu_moths": load_eu_moths,
    "cifar10": load_cifar10,
    "imagefolder": load_imagefolder,
    "synthetic": load_synthetic,
}


def _locate(name: str, root) -> None:
    """Find (online: download) a data set's files without reading them; FileNotFoundError if absent."""
    if name == "eu_moths":
        _find_eu_moths(config.data_root(root))
    elif name == "cifar10":
        base = config.data_root(root)
        local = [t for t in (base / "cifar10", base / "cifar10-jpg", base) if (t / "train").is_dir() and (t / "test").is_dir()]
        if not local and not (base / CIFAR10_ARCHIVE).exists():
            _cifar10_torchvision()
    elif name == "imagefolder":
        folder = Path(root) if root is not None else config.data_root()
        if not folder.is_dir():
            raise FileNotFoundError(f"image folder {folder} does not exist (set the data_root parameter or LT_DATA_ROOT)")


def missing_inputs(runs: list[dict]) -> list[str]:
    """The pre-flight check of a batch of runs (validated parameters): each data set and each local
    weights file they need, looked up once (online, a missing data set is downloaded here, once)
    before any run starts.  Returns one message per missing input, naming the path looked at, the
    setting that changes it and the download that failed; [] when all are there."""
    from .models import weights_file
    problems: dict[str, None] = {}  # ordered, without repeats
    for key in dict.fromkeys((r["dataset"], r.get("data_root")) for r in runs):
        try:
            _locate(*key)
        except FileNotFoundError as exc:
            problems[f"data set {key[0]}: {exc}"] = None
    for key in dict.fromkeys((r.get("pretrained"), r.get("weights_dir")) for r in runs):
        try:
            weights_file(*key)
        except FileNotFoundError as exc:
            problems[f"weights: {exc}"] = None
    return list(problems)


def load_dataset(name: str, root=None, **params) -> ImageDataset:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name](root, **params)


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def split_images(split: ImageSplit, size: int, *, on_error: str = "raise", progress: bool = True):
    """Decoded uint8 images [N, size, size, 3] of a split, and the indices kept (see imagecache)."""
    from .imagecache import decoded_images
    if split.images is not None:
        return _resize_array(split.images, size), np.arange(len(split))
    return decoded_images(split.paths, size, on_error=on_error, progress=progress)


def _resize_array(images: np.ndarray, size: int) -> np.ndarray:
    if images.shape[1] == images.shape[2] == size:
        return images
    import torch
    import torch.nn.functional as F
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
