import numpy as np
import pytest
from PIL import Image

from longtail import data
from longtail.imagecache import ImageDecodeError, decoded_images


def test_eu_moths_real_layout(data_root):
    ds = data.load_dataset("eu_moths", data_root)
    assert ds.num_classes == 200
    assert len(ds.train) + len(ds.test) == 2205
    assert len(ds.test) == 552  # fold 0
    assert set(np.unique(ds.test.labels)) == set(range(200))
    assert ds.class_names[0] == "abrostola_tripartita"
    assert all(p.endswith(".jpg") for p in ds.train.paths[:5])


def test_eu_moths_images_decode_to_cache(data_root, tmp_cache):
    ds = data.load_dataset("eu_moths", data_root)
    first = ds.test.subset(np.arange(8))
    images, kept = data.split_images(first, 64, progress=False)
    assert images.shape == (8, 64, 64, 3) and images.dtype == np.uint8 and len(kept) == 8
    assert images.std() > 10  # real pictures, not zeros
    again, _ = data.split_images(first, 64, progress=False)
    assert np.array_equal(np.asarray(images), np.asarray(again))
    assert len(list((tmp_cache / "images").glob("*.npy"))) == 1  # decoded once


def test_cifar10_from_archive(data_root, tmp_cache):
    ds = data.load_dataset("cifar10", data_root)
    assert ds.num_classes == 10 and len(ds.train) == 50000 and len(ds.test) == 10000
    assert np.bincount(ds.train.labels).tolist() == [5000] * 10
    assert ds.class_names == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert (tmp_cache / "extracted" / "cifar10-jpg" / ".complete").exists()


def test_archive_with_wrong_checksum_is_refused(tmp_path, tmp_cache):
    import tarfile
    (tmp_path / "train" / "a").mkdir(parents=True)
    archive = tmp_path / "x.tar.gz"
    with tarfile.open(archive, "w:gz") as t:
        t.add(tmp_path / "train", arcname="train")
    with pytest.raises(ValueError, match="sha256"):
        data.extract_archive(archive, "0" * 64)


def _make_tree(root, classes=("a", "b"), per_class=5, size=(40, 30)):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(root / c / f"{i}.jpg")


def test_imagefolder_with_seeded_split(tmp_path):
    _make_tree(tmp_path / "photos")
    ds = data.load_dataset("imagefolder", tmp_path / "photos", test_fraction=0.4, split_seed=1)
    assert ds.class_names == ["a", "b"]
    assert np.bincount(ds.test.labels).tolist() == [2, 2] and np.bincount(ds.train.labels).tolist() == [3, 3]
    again = data.load_dataset("imagefolder", tmp_path / "photos", test_fraction=0.4, split_seed=1)
    assert again.test.paths == ds.test.paths


def test_imagefolder_with_train_test_folders(tmp_path):
    _make_tree(tmp_path / "set" / "train", per_class=3)
    _make_tree(tmp_path / "set" / "test", per_class=2)
    ds = data.load_dataset("imagefolder", tmp_path / "set")
    assert len(ds.train) == 6 and len(ds.test) == 4


def test_corrupt_jpeg_is_named_or_skipped(tmp_path, tmp_cache):
    _make_tree(tmp_path / "photos", per_class=3)
    bad = tmp_path / "photos" / "b" / "1.jpg"
    bad.write_bytes(bad.read_bytes()[:100])  # truncated
    paths = sorted(str(p) for p in (tmp_path / "photos").rglob("*.jpg"))
    with pytest.raises(ImageDecodeError, match=str(bad)):
        decoded_images(paths, 16, progress=False)
    with pytest.warns(UserWarning, match=str(bad)):
        images, kept = decoded_images(paths, 16, on_error="skip", progress=False)
    assert len(kept) == 5 and paths.index(str(bad)) not in kept and images.shape[0] == 5


def test_decode_geometry_short_side_then_centre_crop(tmp_path, tmp_cache):
    img = np.zeros((20, 60, 3), np.uint8)  # wide image: left third red, middle green
    img[:, :20, 0] = 255
    img[:, 20:40, 1] = 255
    Image.fromarray(img).save(tmp_path / "w.png")
    out, _ = decoded_images([tmp_path / "w.png"], 10, progress=False)
    assert out.shape == (1, 10, 10, 3)
    assert out[0, :, :, 1].mean() > 200 and out[0, :, :, 0].mean() < 30  # the centre crop is green


def test_synthetic_is_deterministic():
    a, b = data.load_dataset("synthetic", seed=1), data.load_dataset("synthetic", seed=1)
    assert np.array_equal(a.train.images, b.train.images)
    assert a.train.images.dtype == np.uint8 and a.num_classes == 6


def test_unknown_dataset_lists_choices():
    with pytest.raises(ValueError, match="eu_moths, cifar10, imagefolder, synthetic"):
        data.load_dataset("mnist")


def test_missing_eu_moths_says_where_it_looked(tmp_path, tmp_cache, monkeypatch):
    monkeypatch.setattr(data, "EU_MOTHS_URL", "file:///nonexistent/eu-moths.zip")
    with pytest.raises(FileNotFoundError, match="LT_DATA_ROOT"):
        data.load_dataset("eu_moths", tmp_path)


def test_jpeg_round_trip_adds_fresh_distortion_on_a_moved_grid(data_root):
    from longtail.data import jpeg_round_trip
    stored = data.load_dataset("cifar10", data_root).test.subset(np.arange(300))
    images = data.split_images(stored, 32, progress=False)[0].astype(int)
    same_grid = jpeg_round_trip(stored, 75, shift=0).images.astype(int)
    moved = jpeg_round_trip(stored, 75).images
    assert moved.shape == (300, 32, 32, 3) and moved.dtype == np.uint8
    # the local copy is q75 already: on its own grid another q75 pass is nearly idempotent
    # (measured 0.17 grey levels), on a grid moved by half a block it adds a first pass's distortion
    assert np.abs(same_grid - images).mean() < 0.5
    assert 3.0 < np.abs(moved.astype(int) - images).mean() < 6.0


def test_missing_data_and_weights_stop_the_grid_once_before_any_run(tmp_path, monkeypatch, capsys):
    """Offline, without the data set or the weights: one message each (the path looked at, the
    setting, the download that failed), exit status 2, no run folder and no kernel started."""
    import yaml

    from longtail import grid

    def offline(url, *_a, **_k):
        raise OSError(f"offline (no route to {url})")

    monkeypatch.setattr(data, "download", offline)
    monkeypatch.setenv("LT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LT_DATA_ROOT", str(tmp_path / "no-data"))
    monkeypatch.setenv("LT_WEIGHTS_DIR", str(tmp_path / "no-weights"))
    spec = {"name": "offline", "base": {"dataset": "eu_moths", "backbone": "mobilenetv2", "pretrained": "inat_insects",
                                        "mode": "linear", "imbalance_factor": 8, "epochs": 1},
            "grid": {"loss": ["ce", "focal"], "train_set": ["balanced", "longtailed"]}}
    path = tmp_path / "offline.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    assert grid.main([str(path), "--output-root", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("EU Moths not found") == 1 and err.count("pretrained weights") == 1  # once, not per run
    assert f"EU Moths not found under {tmp_path / 'no-data'}" in err and "Set LT_DATA_ROOT" in err
    assert f"download from {data.EU_MOTHS_URL} failed (offline" in err
    assert f"{tmp_path / 'no-weights' / 'mobilenetv2_100.coral_inat_insects.pt'} not found" in err
    assert "set LT_WEIGHTS_DIR" in err
    assert not out.exists() or not any(out.iterdir())
    assert data.missing_inputs([{"dataset": "synthetic", "pretrained": None}]) == []


def test_missing_inputs_is_empty_for_the_real_data(data_root, weights_dir):
    assert data.missing_inputs([{"dataset": "eu_moths", "data_root": None, "pretrained": "inat_insects",
                                 "weights_dir": None}]) == []


def test_an_empty_class_folder_is_named(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / cls / f"{i}.jpg")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("no image here")
    with pytest.raises(FileNotFoundError, match=f"without an image .*{tmp_path / 'c'}; add images"):
        data.load_imagefolder(tmp_path)
    (tmp_path / "c" / "notes.txt").unlink()
    (tmp_path / "c").rmdir()
    assert data.load_imagefolder(tmp_path).num_classes == 2
