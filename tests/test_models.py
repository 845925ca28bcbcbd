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
