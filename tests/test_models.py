import pytest
import torch

from longtail.models import ALIASES, CifarResNet, NormedLinear, build_model, new_head


@pytest.mark.parametrize("alias", list(ALIASES))
def test_thesis_backbones_build_with_new_classifier(alias):
    model = build_model(alias, 7)
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 3, 64, 64) if alias != "vit_b16" else torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 7)
    assert set(model.data_config) == {"mean", "std", "input_size", "crop_pct"}


def test_resnet32_is_the_cifar_network():
    model = build_model("resnet32", 10)
    assert isinstance(model, CifarResNet)
    assert sum(p.numel() for p in model.parameters()) == 464154  # ResNet-32 (He et al. 2016): 0.46 M
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_cosine_head_outputs_cosines():
    model = build_model("resnet32", 5, cosine_head=True)
    assert isinstance(model.get_classifier(), NormedLinear)
    out = model(torch.randn(4, 3, 32, 32))
    assert out.abs().max() <= 1 + 1e-5
    assert isinstance(new_head(model, 5), NormedLinear)
    resnetv2 = build_model("resnet50v2", 3, cosine_head=True)  # conv classifier replaced too
    assert resnetv2.eval()(torch.randn(1, 3, 64, 64)).abs().max() <= 1 + 1e-5


def test_local_weights_load_and_set_normalisation(weights_dir):
    model = build_model("mobilenetv2", 200, "inat_insects", weights_dir=weights_dir)
    assert model.data_config["mean"] == (0.5, 0.5, 0.5) and model.data_config["std"] == (0.5, 0.5, 0.5)
    reference = torch.load(weights_dir / "mobilenetv2_100.coral_inat_insects.pt", weights_only=True)
    assert torch.equal(model.state_dict()["conv_stem.weight"], reference["conv_stem.weight"])
    assert model.get_classifier().out_features == 200


def test_bad_backbone_and_weights_are_named():
    with pytest.raises(ValueError, match="mobilenetv2, resnet50v2, vit_b16, convnext_base"):
        build_model("mobilenet_v9", 3)
    with pytest.raises(FileNotFoundError, match="inat_insects"):
        build_model("mobilenetv2", 3, "inat_insects", weights_dir="/nonexistent")
    with pytest.raises(ValueError, match="mobilenetv2_100"):
        build_model("resnet50v2", 3, "inat_insects")


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_weights_are_read_offline_from_the_weights_folder(tmp_path, monkeypatch, suffix):
    """pretrained 'timm' takes <weights dir>/<timm name>.safetensors|.pth before the hub: a state dict
    saved from a randomly initialised model comes back in every backbone tensor (the hub is unreachable)."""
    import timm
    from safetensors.torch import save_file

    from longtail.models import timm_weights_file
    torch.manual_seed(0)
    source = timm.create_model("mobilenetv2_035", pretrained=False)  # random, 1000 classes like the hub's
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    path = tmp_path / f"mobilenetv2_035{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    monkeypatch.setattr(timm.models._builder, "load_pretrained",  # any hub access fails the test
                        lambda *a, **k: pytest.fail("the hub was asked although a local copy exists"))
    assert timm_weights_file("mobilenetv2_035", tmp_path) == path
    model = build_model("mobilenetv2_035", 5, "timm", weights_dir=tmp_path)
    got = model.state_dict()
    backbone = [k for k in state if not k.startswith("classifier.")]
    assert backbone and all(torch.equal(got[k], state[k]) for k in backbone)
    assert got["classifier.weight"].shape == (5, source.num_features)  # a new classifier
    assert timm_weights_file("mobilenetv2_100", tmp_path) is None


def test_no_ipywidgets_warning_in_a_notebook_that_builds_a_model(tmp_path):
    """Run pages showed "TqdmWarning: IProgress not found" (timm -> huggingface_hub -> tqdm.auto)."""
    import nbformat
    import papermill
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "from longtail.models import build_model\nimport huggingface_hub.file_download, tqdm.auto\n"
        "print(type(build_model('mobilenetv2', 3)).__name__)")])
    nbformat.write(nb, tmp_path / "nb.ipynb")
    papermill.execute_notebook(str(tmp_path / "nb.ipynb"), str(tmp_path / "out.ipynb"), kernel_name="longtail",
                               progress_bar=False)
    text = (tmp_path / "out.ipynb").read_text()
    assert "EfficientNet" in text and "IProgress" not in text  # timm builds MobileNetV2 as an EfficientNet
