"""Data sets: each loader returns images (files or an in-memory uint8 array), integer labels and
class names, as an :class:`ImageDataset` with a ``train`` and a ``test`` split.

| name          | source                                                                        |
|---------------|-------------------------------------------------------------------------------|
| ``eu_moths``  | the published EU Moths layout under ``<root>/eu-moths`` (or ``root`` itself);  |
|               | downloaded from GitHub cvjena/eu-moths-dataset when missing and online         |
| ``cifar10``   | ``<root>/cifar10-jpg.tar.gz`` or a ``train/<class>/*.jpg`` + ``test/...`` tree; |
|               | else torchvision's ``CIFAR10(download=True)`` when online                      |
| ``imagefolder`` | any ``root/<class>/*`` tree, with ``train/`` and ``test/`` subfolders or a   |
|               | seeded stratified split (``test_fraction``); or *given* sets (``GIVEN_SETS``:   |
|               | ``train_balanced/`` ... ``test_longtailed/``, or the manifest ``splits.csv``)  |
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
from .imagecache import decoded_images, decoded_images_on_use
from .subsets import stratified_split

#: the given sets of an imagefolder root, used as they are (no subsampling)
GIVEN_SETS = ("train_balanced", "train_longtailed", "test_balanced", "test_longtailed")
#: the manifest of given sets: columns path (relative to the root), class, split (one of GIVEN_SETS)
MANIFEST = "splits.csv"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
CIFAR10_ARCHIVE = "cifar10-jpg.tar.gz"
CIFAR10_SHA256 = "ff937e22f2e42c12741508e6351cd54497a0e81afe873c5dc0592ff3b9aa0d70"
EU_MOTHS_URL = "https://github.com/cvjena/eu-moths-dataset/archive/fecaa38.zip"


@dataclass
class ImageSplit:
    """One split: ``labels`` and either image ``paths`` or in-memory ``images`` (uint8 NHWC);
    ``part``: the given set (``GIVEN_SETS``) of every image, or None when the sets are derived;
    ``content_keys``: given sets only, an identity of every image, equal exactly for files of equal
    content (:func:`content_keys`)."""
    labels: np.ndarray
    paths: list[str] | None = None
    images: np.ndarray | None = None
    part: np.ndarray | None = None
    content_keys: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices) -> "ImageSplit":
        indices = np.asarray(indices, dtype=np.int64)
        return ImageSplit(
            labels=self.labels[indices],
            paths=None if self.paths is None else [self.paths[i] for i in indices],
            images=None if self.images is None else self.images[indices],
            part=None if self.part is None else self.part[indices],
            content_keys=None if self.content_keys is None else self.content_keys[indices],
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


def _jpeg_quality_problem(q) -> str | None:
    ok = q is None or (isinstance(q, int) and not isinstance(q, bool) and 1 <= q <= 100)
    return None if ok else f"jpeg_quality={q!r}: must be an integer in 1..100 (or None: off)"


def load_cifar10(root=None, *, jpeg_quality: int | None = None, **_) -> ImageDataset:
    """CIFAR-10 (Krizhevsky 2009) from a local JPEG tree or archive, or torchvision's download.

    ``jpeg_quality`` (default None: off) passes every image, training and test, through one more
    JPEG encode/decode at that quality and keeps the result in memory (:func:`jpeg_round_trip`):
    an ablation that measures what a JPEG pass costs, as an estimate of what the first pass (the
    local copy's) cost against the original arrays."""
    ds = _load_cifar10(config.data_root(root))
    if (problem := _jpeg_quality_problem(jpeg_quality)) is not None:
        raise ValueError(problem)
    if jpeg_quality is not None:
        ds.train, ds.test = (jpeg_round_trip(s, jpeg_quality) for s in (ds.train, ds.test))
        ds.info = {**ds.info, "note": f"{ds.info.get('note', 'CIFAR-10')}; one more JPEG pass at quality {jpeg_quality}"}
    return ds


def _load_cifar10(root: Path) -> ImageDataset:
    for tree in (root / "cifar10", root / "cifar10-jpg", root):
        if (tree / "train").is_dir() and (tree / "test").is_dir():
            return _with_info(load_imagefolder(tree, name="cifar10"), tree)
    archive = root / CIFAR10_ARCHIVE
    if archive.exists():
        return _with_info(load_imagefolder(extract_archive(archive, CIFAR10_SHA256), name="cifar10"), archive)
    return _cifar10_torchvision()


def jpeg_round_trip(split: ImageSplit, quality: int, shift: int = 4) -> ImageSplit:
    """The split's images decoded (as stored) and passed once through JPEG at ``quality`` (PIL's
    default 4:2:0 chroma subsampling), as an in-memory uint8 array.

    The block grid is moved by ``shift`` pixels (edge padding on the top and left, cropped off
    after decoding): re-encoding a JPEG on its own grid at the same quality is nearly idempotent
    (CIFAR-10 test images, q75: mean |change| 0.17 grey levels, PSNR 50 dB), whereas on a grid
    moved by half a block it adds fresh distortion of a first pass's size (4.2 levels, 32.8 dB)."""
    import io

    from PIL import Image

    def once(img: np.ndarray) -> np.ndarray:
        padded = np.pad(img, ((shift, 0), (shift, 0), (0, 0)), mode="edge") if shift else img
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(padded)).save(buf, format="JPEG", quality=quality)
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), dtype=np.uint8)[shift:, shift:]

    if split.images is not None:
        images = split.images
    else:
        with Image.open(split.paths[0]) as first:
            size = min(first.size)
        images, _ = split_images(split, size, progress=False)
    return ImageSplit(split.labels, images=np.stack([once(np.asarray(im)) for im in images]))


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
    if (root / MANIFEST).exists() or any((root / g).is_dir() for g in GIVEN_SETS):
        return load_given_sets(root, name=name)
    if (root / "train").is_dir() and (root / "test").is_dir():
        names = _class_folders(root / "train")
        train, test = (_scan(root / s, names) for s in ("train", "test"))
        _no_empty_classes(train, names, root / "train")
    else:
        names = _class_folders(root)
        everything = _scan(root, names)
        _no_empty_classes(everything, names, root)
        rest, held = stratified_split(everything.labels, test_fraction, seed=split_seed)
        train, test = everything.subset(rest), everything.subset(held)
    return ImageDataset(name, names, train, test, info={"source": str(root)})


def _no_empty_classes(split: ImageSplit, names: list[str], root: Path) -> None:
    """A class folder without an image file is an error naming it (given sets may lack a class: see
    :func:`load_given_sets`)."""
    empty = [str(root / names[c]) for c in np.flatnonzero(np.bincount(split.labels, minlength=len(names)) == 0)]
    if empty:
        raise FileNotFoundError(f"class folder(s) without an image ({', '.join(sorted(IMAGE_SUFFIXES))}): "
                                f"{', '.join(empty)}; add images or remove the folder")


def load_given_sets(root, *, name: str = "imagefolder") -> ImageDataset:
    """Given training and test sets, used as they are: ``root/<set>/<class>/<image>`` for the sets
    of ``GIVEN_SETS`` present, or the manifest ``root/splits.csv`` (``path,class,split``, paths
    relative to the root), which gives the same sets without copying files.

    ``train`` holds the images of both training sets, ``test`` those of both test sets; ``part``
    says which set each image is in.  Classes are the union over all sets, sorted by name.  A
    class without an image in one training set is allowed (``info["absent"]`` lists it).  Errors,
    each naming what is wrong: a set name not in ``GIVEN_SETS`` (a folder beside them, or a
    manifest value), a missing manifest file, an empty set, no training set, no ``test_balanced``,
    a test image whose class has no image in any training set, and an image in a training and in a
    test set (the same path, or files of equal content: :func:`content_keys`).
    """
    root = Path(root)
    entries: dict[str, list[tuple[str, str]]] = {}
    if (root / MANIFEST).exists():
        import csv
        with open(root / MANIFEST, newline="") as f:
            reader = csv.DictReader(f)
            if not {"path", "class", "split"} <= set(reader.fieldnames or ()):
                raise ValueError(f"{root / MANIFEST}: needs the columns path,class,split; has {reader.fieldnames}")
            missing = []
            for line, row in enumerate(reader, start=2):
                split = row["split"].strip()
                if split not in GIVEN_SETS:
                    raise ValueError(f"{root / MANIFEST} line {line}: split {split!r} is not a set name; "
                                     f"choose one of {', '.join(GIVEN_SETS)}")
                path = root / row["path"].strip()
                if not path.is_file():
                    missing.append(str(path))
                entries.setdefault(split, []).append((str(path), row["class"].strip()))
            if missing:
                raise FileNotFoundError(f"{root / MANIFEST}: {len(missing)} listed image(s) not found, e.g. "
                                        f"{', '.join(missing[:3])}")
    else:
        others = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                        and p.name not in GIVEN_SETS)
        if others:
            raise ValueError(f"{root}: folder(s) {', '.join(others)} beside the given sets are not set names; "
                             f"choose among {', '.join(GIVEN_SETS)} (or give a {MANIFEST})")
        for g in GIVEN_SETS:
            if (root / g).is_dir():
                entries[g] = [(str(f), cls) for cls in _class_folders(root / g, allow_empty=True)
                              for f in sorted((root / g / cls).iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    empty = [g for g in GIVEN_SETS if g in entries and not entries[g]]
    if empty:
        raise ValueError(f"{root}: the given set(s) {', '.join(empty)} hold no image")
    train_sets = [g for g in GIVEN_SETS[:2] if g in entries]
    if not train_sets:
        raise ValueError(f"{root}: no training set; give train_balanced and/or train_longtailed "
                         f"(given: {', '.join(entries) or 'none'})")
    if "test_balanced" not in entries:
        raise ValueError(f"{root}: the balanced test set test_balanced is required (given: {', '.join(entries)}); "
                         "test_longtailed alone cannot give the balanced test split")
    names = sorted({cls for rows in entries.values() for _, cls in rows})
    trained = {cls for g in train_sets for _, cls in entries[g]}
    for g in GIVEN_SETS[2:]:
        unknown = sorted({cls for _, cls in entries.get(g, []) if cls not in trained})
        if unknown:
            raise ValueError(f"{root}: {g} holds class(es) with no training image in "
                             f"{' or '.join(train_sets)}: {', '.join(unknown[:10])}"
                             + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""))
    index = {cls: i for i, cls in enumerate(names)}

    train_paths = [path for g in GIVEN_SETS[:2] for path, _ in entries.get(g, [])]
    test_paths = [path for g in GIVEN_SETS[2:] for path, _ in entries.get(g, [])]
    key_of = dict(zip(train_paths + test_paths, content_keys(train_paths + test_paths)))
    _no_test_image_in_training(root, entries, key_of)

    def split(sets):
        rows = [(path, index[cls], g) for g in sets for path, cls in entries.get(g, [])]
        return ImageSplit(np.asarray([r[1] for r in rows], dtype=np.int64), [r[0] for r in rows],
                          part=np.asarray([r[2] for r in rows], dtype=object),
                          content_keys=np.asarray([key_of[r[0]] for r in rows], dtype=object))

    absent = {g: sorted(set(names) - {cls for _, cls in entries[g]}) for g in train_sets}
    return ImageDataset(name, names, split(GIVEN_SETS[:2]), split(GIVEN_SETS[2:]),
                        info={"source": str(root), "given": list(entries), "absent": {g: a for g, a in absent.items() if a}})


def content_keys(paths) -> list[str]:
    """An identity of each file, equal exactly for files of equal content: its sha256 where another
    file of ``paths`` has its size (only those are read), else its resolved path.  The same path
    listed twice gets one key."""
    import collections
    resolved = [str(Path(p).resolve()) for p in paths]
    size = {p: os.path.getsize(p) for p in set(resolved)}
    same_size = collections.Counter(size.values())
    return [sha256(p) if same_size[size[p]] > 1 else p for p in resolved]


def _no_test_image_in_training(root: Path, entries: dict, key_of: dict) -> None:
    """An image in a training set and in a test set is an error naming both files: a model tested on
    an image it trained on."""
    train_keys: dict[str, str] = {}
    for g in GIVEN_SETS[:2]:
        for path, _ in entries.get(g, []):
            train_keys.setdefault(key_of[path], f"{g}: {path}")
    both = [f"{g}: {path} = {train_keys[key_of[path]]}" for g in GIVEN_SETS[2:] for path, _ in entries.get(g, [])
            if key_of[path] in train_keys]
    if both:
        raise ValueError(f"{root}: {len(both)} test image(s) are also training images (the same file or equal "
                         f"content); remove them from one of the sets: " + "; ".join(both[:5])
                         + (f" and {len(both) - 5} more" if len(both) > 5 else ""))


def _class_folders(root: Path, allow_empty: bool = False) -> list[str]:
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names and not allow_empty:
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


#: checks of loader parameters that a default's type cannot express: {dataset: {name: check}},
#: each check returning None or what is wrong (params.validate runs them before any work)
DATASET_PARAM_CHECKS = {"cifar10": {"jpeg_quality": _jpeg_quality_problem}}

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
    from .models import weights_file  # models imports torch: only when weights are asked for
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


def split_images(split: ImageSplit, size: int, *, on_error: str = "raise", progress: bool = True,
                 on_use: bool = False):
    """Decoded uint8 images [N, size, size, 3] of a split, and the indices kept (see imagecache).
    ``on_use``: instead of the images, a function that gives them, verified at its first call
    (``imagecache.decoded_images_on_use``), for a caller that may not read them."""
    if split.images is not None:
        images = _resize_array(split.images, size)
        return (lambda: images) if on_use else images, np.arange(len(split))
    if on_use:
        return decoded_images_on_use(split.paths, size, on_error=on_error, progress=progress)
    return decoded_images(split.paths, size, on_error=on_error, progress=progress)


def _resize_array(images: np.ndarray, size: int) -> np.ndarray:
    if images.shape[1] == images.shape[2] == size:
        return images
    import torch
    import torch.nn.functional as F
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
