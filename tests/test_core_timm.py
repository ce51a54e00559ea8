"""The patch-scan backbones through timm's real registry."""
import pytest
import timm
import torch

import mambaverse
import mambaverse.vision  # noqa: F401  (registers the presets with timm)


@pytest.mark.parametrize("name", ["mambaverse_vim_tiny", "mambaverse_vmamba_tiny"])
def test_timm_create_model_builds_our_backbone(name):
    assert name in timm.list_models("mambaverse_*")
    model = timm.create_model(name, num_classes=5)
    assert isinstance(model, (mambaverse.VimBackbone, mambaverse.VMambaBackbone))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    with pytest.raises(mambaverse.ConfigError, match="no pretrained weights"):
        timm.create_model(name, pretrained=True)
