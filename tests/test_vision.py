"""The vision domain: data modules on real image files written here (every PIL mode, odd sizes, bad files),
real Fashion-MNIST IDX files and AAL brain slices (Debian packages), the timm model contract of Vim and
VMamba (features_only, resolution changes, checkpoint resampling, grad checkpointing), and tiny fits
through the `mambaverse` CLI."""
import csv
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from PIL import Image

import mambaverse as mv
import mambaverse.vision  # noqa: F401  (registers the presets)
from mambaverse.cli import main as cli_main
from mambaverse.vision.data import (FASHION_MNIST_DIR, MRICRON_TEMPLATES, FashionMNISTDataModule,
                                    ImageFolderDataModule, SegmentationFolderDataModule, aal_slices_main,
                                    build_aal_slices, load_image, read_idx)
from mambaverse.vision.errors import VisionDataError

HAS_FMNIST = Path(FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz").is_file()
HAS_MRICRON = Path(MRICRON_TEMPLATES, "aal.nii.gz").is_file()
TINY_VIM = {"embed_dim": 16, "depth": 2, "d_state": 4}
TINY_VMAMBA = {"dims": [8, 16], "depths": [1, 1], "d_state": 4}


def _gradient(h, w, channels=None):
    """A smooth real-looking image: horizontal and vertical ramps (uint8)."""
    y, x = np.mgrid[0:h, 0:w]
    base = (x * 255 // max(w - 1, 1) + y * 128 // max(h - 1, 1)) % 256
    return base.astype(np.uint8) if channels is None else np.stack([(base + 60 * c) % 256 for c in range(channels)], -1).astype(np.uint8)


def _write_all_modes(folder: Path, seed: int = 0) -> list[Path]:
    """One file per PIL mode/format a user may bring, at odd sizes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = 17 + int(rng.integers(0, 9)), 23 + int(rng.integers(0, 9))
    files = []
    Image.fromarray(_gradient(h, w), "L").save(folder / "gray.png"); files.append(folder / "gray.png")
    Image.fromarray(_gradient(h, w, 3), "RGB").save(folder / "rgb.jpg", quality=90); files.append(folder / "rgb.jpg")
    Image.fromarray(_gradient(h, w, 4), "RGBA").save(folder / "rgba.png"); files.append(folder / "rgba.png")
    pal = Image.fromarray(_gradient(h, w, 3), "RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    pal.save(folder / "palette.png"); files.append(folder / "palette.png")
    Image.fromarray((_gradient(h, w).astype(np.uint16) * 257)).save(folder / "deep16.png"); files.append(folder / "deep16.png")
    Image.fromarray(_gradient(h, w, 3), "RGB").save(folder / "rgb.bmp"); files.append(folder / "rgb.bmp")
    Image.fromarray(_gradient(h, w) > 100).save(folder / "bilevel.tif"); files.append(folder / "bilevel.tif")
    return files


# -- images and folders ----------------------------------------------------------------------------------

def test_load_image_converts_every_mode(tmp_path):
    files = _write_all_modes(tmp_path)
    modes = {p.name: Image.open(p).mode for p in files}
    assert {"L", "RGB", "RGBA", "P", "1"} <= set(modes.values()) and modes["deep16.png"].startswith("I")
    for path in files:
        rgb, gray = load_image(path, 3), load_image(path, 1)
        assert rgb.mode == "RGB" and gray.mode == "L" and rgb.size == Image.open(path).size
    # 16-bit values are scaled by 65535, not clipped: 257 * v -> v
    assert np.array_equal(np.asarray(load_image(tmp_path / "deep16.png", 1)), _gradient(*np.asarray(Image.open(tmp_path / "gray.png")).shape))


def test_image_folder_module_reads_mixed_files_and_splits(tmp_path):
    for i, cls in enumerate(["cat", "dog", "emu"]):
        for j in range(3):
            _write_all_modes(tmp_path / "data" / cls / f"s{j}", seed=10 * i + j)
    (tmp_path / "pred").mkdir()
    Image.fromarray(_gradient(40, 30, 3)).save(tmp_path / "pred" / "a.png")
    dm = ImageFolderDataModule(str(tmp_path / "data"), img_size=24, in_chans=3, batch_size=8, val_fraction=0.2,
                               test_fraction=0.2, predict_root=str(tmp_path / "pred"), mixup_alpha=0.4, cutmix_alpha=1.0)
    assert dm.classes == ["cat", "dog", "emu"]
    dm.setup("fit")
    sizes = {k: len(v) for k, v in dm.split_samples.items()}
    assert sum(sizes.values()) == 3 * 3 * 7 and sizes["val"] >= 3 and sizes["test"] >= 3
    for name in ("val", "test"):  # stratified: every class in each held-out split
        assert {y for _, y in dm.split_samples[name]} == {0, 1, 2}
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (8, 3, 24, 24) and images.dtype == torch.float32 and labels.dtype == torch.int64
    mixed, soft = dm.mixup(images, labels)  # timm Mixup/CutMix: soft targets that sum to one
    assert soft.shape == (8, 3) and torch.allclose(soft.sum(1), torch.ones(8))
    gray = ImageFolderDataModule(str(tmp_path / "data"), img_size=(20, 28), in_chans=1, batch_size=4)
    gray.setup("fit")
    assert next(iter(gray.val_dataloader()))[0].shape == (4, 1, 20, 28)
    dm.setup("predict")
    images, paths = next(iter(dm.predict_dataloader()))
    assert images.shape == (1, 3, 24, 24) and list(paths) == [str(tmp_path / "pred" / "a.png")]


def test_bad_image_files_and_folders_raise_one_line_errors(tmp_path):
    good = tmp_path / "ok.png"
    Image.fromarray(_gradient(64, 64, 3)).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not a jpeg at all")
    for bad in (truncated, garbage):
        with pytest.raises(VisionDataError, match=bad.name) as info:
            load_image(bad)
        assert "\n" not in str(info.value) and isinstance(info.value, mv.MambaverseError)
    root = tmp_path / "folder"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    Image.fromarray(_gradient(8, 8)).save(root / "a" / "x.png")
    (root / "b" / "notes.txt").write_text("no images here")
    with pytest.raises(VisionDataError, match=r"folder[/\\]b: empty class folder"):
        ImageFolderDataModule(str(root))
    (tmp_path / "empty").mkdir()
    with pytest.raises(VisionDataError, match="folder with no images"):
        ImageFolderDataModule(str(tmp_path / "empty"))
    loose = tmp_path / "loose"
    loose.mkdir()
    Image.fromarray(_gradient(8, 8)).save(loose / "x.png")
    with pytest.raises(VisionDataError, match="no class sub-folders"):
        ImageFolderDataModule(str(loose))
    # a truncated file inside a class folder fails when read, naming the file
    (root / "b" / "t.png").write_bytes(truncated.read_bytes())
    dm = ImageFolderDataModule(str(root), img_size=16, val_fraction=0.0, batch_size=2)
    dm.setup("fit")
    with pytest.raises(VisionDataError, match="t.png: cannot read image"):
        list(dm.train_dataloader())


# -- Fashion-MNIST -------------------------------------------------------------------------------------

@pytest.mark.skipif(not HAS_FMNIST, reason="needs the Debian package dataset-fashion-mnist")
def test_fashion_mnist_idx_files(tmp_path):
    images = read_idx(Path(FASHION_MNIST_DIR) / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(Path(FASHION_MNIST_DIR) / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    assert np.bincount(labels).tolist() == [1000] * 10  # the official test set is balanced
    dm = FashionMNISTDataModule(train_subset=200, val_size=100, test_subset=50, batch_size=25)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (200, 100, 50)
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (25, 1, 28, 28) and 0 <= int(y.min()) and int(y.max()) <= 9
    # broken copies: truncated data and a wrong magic number
    raw = gzip.open(Path(FASHION_MNIST_DIR) / "t10k-labels-idx1-ubyte.gz").read()
    (tmp_path / "short.gz").write_bytes(gzip.compress(raw[:5000]))
    with pytest.raises(VisionDataError, match=r"short.gz: IDX file holds 4992 bytes .* \(truncated\?\)"):
        read_idx(tmp_path / "short.gz")
    (tmp_path / "magic.gz").write_bytes(gzip.compress(b"\x12\x34" + raw[2:]))
    with pytest.raises(VisionDataError, match="magic.gz: not an unsigned-byte IDX file"):
        read_idx(tmp_path / "magic.gz")


# -- segmentation --------------------------------------------------------------------------------------

def _write_pairs(root: Path, n: int, size=(29, 37), num_classes=3, mode="RGB"):
    """Images whose intensity encodes the class of each pixel (so a joint transform can be checked)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    h, w = size
    for i in range(n):
        mask = np.zeros((h, w), np.uint8)
        mask[: h // 2, : w // 3] = 1 % num_classes
        mask[h // 3:, w // 2 + i % 3:] = 2 % num_classes
        image = (mask.astype(np.uint8) * 100)
        if mode == "RGB":
            image = np.stack([image] * 3, -1)
        Image.fromarray(image).save(root / "images" / f"p{i:02d}.png")
        Image.fromarray(mask, "L").save(root / "masks" / f"p{i:02d}.png")


def test_segmentation_pairs_augment_image_and_mask_together(tmp_path):
    _write_pairs(tmp_path, 10)
    (tmp_path / "classes.json").write_text(json.dumps(["bg", "left", "right"]))
    dm = SegmentationFolderDataModule(str(tmp_path), num_classes=3, img_size=32, batch_size=5, scale=(0.3, 1.0),
                                      hflip=0.5, mean=(0.0,) * 3, std=(1.0,) * 3, val_fraction=0.2, test_fraction=0.2)
    dm.setup("fit")
    assert dm.classes == ["bg", "left", "right"] and len(dm.train_set) == 6
    torch.manual_seed(0)
    for _ in range(3):
        images, masks = next(iter(dm.train_dataloader()))
        assert images.shape == (5, 3, 32, 32) and masks.shape == (5, 32, 32) and masks.dtype == torch.int64
        decoded = torch.round(images[:, 0] * 255 / 100).long()  # the class each image pixel says
        assert (decoded == masks).float().mean() > 0.9  # same crop and flip for both (edges blur in the image)


def test_bad_masks_raise_one_line_errors_naming_the_file(tmp_path):
    _write_pairs(tmp_path / "ok", 3)
    SegmentationFolderDataModule(str(tmp_path / "ok"), num_classes=3, img_size=16).setup("fit")
    _write_pairs(tmp_path / "small", 3)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "small" / "masks" / "p01.png")
    with pytest.raises(VisionDataError, match=r"p01.png: mask is 10x10 \(WxH\) but its image .* is 37x29") as info:
        SegmentationFolderDataModule(str(tmp_path / "small"), num_classes=3).setup("fit")
    assert "\n" not in str(info.value)
    _write_pairs(tmp_path / "labels", 3)
    with pytest.raises(VisionDataError, match=r"masks[/\\]p00.png: mask labels \[2\] are outside 0..1"):
        SegmentationFolderDataModule(str(tmp_path / "labels"), num_classes=2).setup("fit")
    # an ignore label is allowed when declared
    mask = np.asarray(Image.open(tmp_path / "ok" / "masks" / "p00.png")).copy()
    mask[0, 0] = 255
    Image.fromarray(mask).save(tmp_path / "ok" / "masks" / "p00.png")
    SegmentationFolderDataModule(str(tmp_path / "ok"), num_classes=3, ignore_index=255).setup("fit")
    with pytest.raises(VisionDataError, match=r"labels \[255\] are outside 0..2 \(num_classes=3\)"):
        SegmentationFolderDataModule(str(tmp_path / "ok"), num_classes=3, ignore_index=None).setup("fit")
    Image.fromarray(np.zeros((29, 37, 3), np.uint8)).save(tmp_path / "ok" / "masks" / "p02.png")
    with pytest.raises(VisionDataError, match="p02.png: mask has mode RGB"):
        SegmentationFolderDataModule(str(tmp_path / "ok"), num_classes=3, ignore_index=255).setup("fit")
    (tmp_path / "ok" / "masks" / "p02.png").unlink()
    with pytest.raises(VisionDataError, match=r"p02.png: no mask"):
        SegmentationFolderDataModule(str(tmp_path / "ok"), num_classes=3, ignore_index=255).setup("fit")


@pytest.mark.skipif(not HAS_MRICRON, reason="needs the Debian package mricron-data")
def test_aal_slices_become_segmentation_pairs(tmp_path):
    info = build_aal_slices(tmp_path / "aal", labels="lobes", axes=("axial",), step=12)
    counts = info["counts"]
    assert info["classes"][0] == "background" and len(info["classes"]) == 8 and sum(counts.values()) >= 8
    masks = sorted((tmp_path / "aal").glob("*/masks/*.png"))
    images = sorted((tmp_path / "aal").glob("*/images/*.png"))
    assert len(masks) == len(images) == sum(counts.values())
    arrays = [np.asarray(Image.open(m)) for m in masks]
    assert all(a.shape == (217, 181) for a in arrays)  # axial slice of the 181x217x181 MNI grid
    assert max(a.max() for a in arrays) <= 7 and len(np.unique(np.concatenate([a.ravel() for a in arrays]))) >= 6
    dm = SegmentationFolderDataModule(str(tmp_path / "aal"), num_classes=8, ignore_index=None, in_chans=1, img_size=64)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape[1:] == (1, 64, 64) and y.shape[1:] == (64, 64)
    # built once: a second call reuses the folder
    assert build_aal_slices(tmp_path / "aal", labels="lobes", axes=("axial",), step=12)["counts"] == counts
    # the `mambaverse aal-slices` command: a one-line error and exit status 2 without the volumes
    assert aal_slices_main([str(tmp_path / "other"), "--templates", str(tmp_path)]) == 2


# -- the timm contract --------------------------------------------------------------------------------

@pytest.mark.parametrize("name,overrides", [("mambaverse_vim_tiny", TINY_VIM), ("mambaverse_vmamba_tiny", TINY_VMAMBA)])
def test_timm_contract(name, overrides):
    model = timm.create_model(name, num_classes=5, **overrides).eval()
    x = torch.randn(2, 3, 32, 32)
    cfg = model.pretrained_cfg
    # as for timm's own models, pretrained_cfg describes the preset (10 classes), the model has its 5
    assert model.default_cfg == cfg and cfg["input_size"] == (3, 32, 32) and cfg["num_classes"] == 10
    assert model.num_classes == 5 and cfg["architecture"] == name
    assert cfg["classifier"] == "head" and model.get_classifier() is model.head
    features = model.forward_features(x)
    assert torch.allclose(model.forward_head(features), model(x), atol=1e-6)
    assert model.forward_head(features, pre_logits=True).shape == (2, model.num_features)
    model.reset_classifier(3, "avg")
    assert model(x).shape == (2, 3) and model.global_pool == "avg"
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)
    with pytest.raises(mv.ConfigError, match="global_pool='max'"):
        model.reset_classifier(3, "max")
    # any resolution: non-square, larger than trained; Vim resamples its position embeddings
    assert model.forward_head(model.forward_features(torch.randn(1, 3, 48, 64)), pre_logits=True).shape == (1, model.num_features)
    # features_only through timm's wrapper: shapes agree with feature_info
    pyramid = timm.create_model(name, features_only=True, out_indices=(0, 1), **overrides)
    maps = pyramid(torch.randn(2, 3, 64, 48))
    assert [m.shape[1] for m in maps] == pyramid.feature_info.channels()
    assert [(64 // r, 48 // r) for r in pyramid.feature_info.reduction()] == [tuple(m.shape[-2:]) for m in maps]


def test_vim_resampled_positions_and_checkpoints_of_another_size():
    small = timm.create_model("mambaverse_vim_tiny", num_classes=4, **TINY_VIM).eval()
    native = small.forward_features(torch.randn(1, 3, 32, 32))
    assert native.shape == (1, 65, 16) and small.cls_index == 32
    big = timm.create_model("mambaverse_vim_tiny", num_classes=4, img_size=64, **TINY_VIM).eval()
    assert big.pos_embed.shape == (1, 257, 16)
    big.load_state_dict(small.state_dict())  # pos_embed resampled from the 8x8 to the 16x16 grid
    x = torch.randn(2, 3, 64, 64)
    # the loaded big model equals the small model run at 64x64 (both resample the same 8x8 table to 16x16)
    assert torch.allclose(big(x), small(x), atol=1e-5)
    with pytest.raises(mv.ShapeError, match="multiples of patch_size=4"):
        small(torch.randn(1, 3, 30, 30))
    padded = timm.create_model("mambaverse_vim_tiny", dynamic_img_pad=True, **TINY_VIM)
    assert padded(torch.randn(1, 3, 30, 30)).shape == (1, 10)


@pytest.mark.parametrize("name,overrides", [("vim_tiny", TINY_VIM), ("vmamba_tiny", TINY_VMAMBA)])
def test_grad_checkpointing_gives_the_same_gradients(name, overrides):
    torch.manual_seed(0)
    model = mv.create_model(name, **overrides).train()
    x = torch.randn(2, 3, 32, 32)
    model(x).square().sum().backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x.requires_grad_()).square().sum().backward()
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, plain[n], atol=1e-5), n


def test_paper_sized_presets():
    with torch.device("meta"):  # parameter counts without allocating memory
        counts = {n: sum(p.numel() for p in mv.create_model(n).parameters()) / 1e6
                  for n in ("vim_t", "vim_s", "vmamba_t", "vmamba_s")}
    assert 7 < counts["vim_t"] < 8.5 and 25 < counts["vim_s"] < 29  # paper: 7M, 26M
    assert 24 < counts["vmamba_t"] < 31 and 40 < counts["vmamba_s"] < 51  # paper: 30M, 50M
    assert mv.get_builder("VimBackbone") is mv.VimBackbone
    # every preset builds through timm as a feature pyramid (meta device: no memory, no compute)
    with torch.device("meta"):
        for name in timm.list_models("mambaverse_*"):
            pyramid = timm.create_model(name, features_only=True)
            reductions = pyramid.feature_info.reduction()
            assert len(reductions) in (2, 4) and reductions == sorted(reductions), name


# -- through the CLI ----------------------------------------------------------------------------------

def _run_cli(*args):
    assert cli_main(list(args)) == 0


def test_cli_classification_fit_test_predict(tmp_path):
    for i, cls in enumerate(["bright", "dark"]):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for j in range(6):
            value = 200 if cls == "bright" else 40
            Image.fromarray(np.full((18 + j, 20), value + j, np.uint8)).save(tmp_path / "data" / cls / f"{j}.png")
    out = tmp_path / "run"
    config = {
        "seed_everything": 0,
        "model": {"class_path": "mambaverse.vision.tasks.ImageClassifier",
                  "init_args": {"num_classes": 2, "backbone": "vim_tiny", "in_chans": 1, "warmup_steps": 1,
                                "backbone_overrides": {"img_size": 16, **TINY_VIM, "depth": 1},
                                "output_dir": str(out)}},
        "data": {"class_path": "mambaverse.vision.data.ImageFolderDataModule",
                 "init_args": {"root": str(tmp_path / "data"), "img_size": 16, "in_chans": 1, "batch_size": 4,
                               "val_fraction": 0.25, "test_fraction": 0.25, "predict_root": str(tmp_path / "data")}},
        "trainer": {"accelerator": "cpu", "max_epochs": 1, "enable_progress_bar": False, "enable_model_summary": False,
                    "default_root_dir": str(out), "logger": False, "enable_checkpointing": False},
    }
    path = tmp_path / "cls.yaml"
    path.write_text(yaml.safe_dump(config))
    _run_cli("fit", "--config", str(path))
    _run_cli("test", "--config", str(path))
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert metrics["n"] == 3 and metrics["classes"] == ["bright", "dark"] and 0 <= metrics["top1"] <= 1
    assert (out / "confusion_matrix.png").stat().st_size > 1000
    _run_cli("predict", "--config", str(path))
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(rows) == 12 and {r["class_name"] for r in rows} <= {"bright", "dark"}


def test_cli_segmentation_fit_test_predict(tmp_path):
    _write_pairs(tmp_path / "data", 8, mode="L")
    out = tmp_path / "run"
    config = {
        "model": {"class_path": "mambaverse.vision.tasks.SemanticSegmenter",
                  "init_args": {"num_classes": 3, "backbone": "vmamba_tiny", "backbone_overrides": TINY_VMAMBA,
                                "in_chans": 1, "decoder_dim": 8, "pool_scales": [1, 2], "warmup_steps": 1,
                                "output_dir": str(out), "overlay_count": 2}},
        "data": {"class_path": "mambaverse.vision.data.SegmentationFolderDataModule",
                 "init_args": {"root": str(tmp_path / "data"), "num_classes": 3, "in_chans": 1, "img_size": 32,
                               "batch_size": 4, "val_fraction": 0.25, "test_fraction": 0.25,
                               "predict_root": str(tmp_path / "data" / "images")}},
        "trainer": {"accelerator": "cpu", "max_epochs": 1, "enable_progress_bar": False, "enable_model_summary": False,
                    "default_root_dir": str(out), "logger": False, "enable_checkpointing": False},
    }
    path = tmp_path / "seg.yaml"
    path.write_text(yaml.safe_dump(config))
    _run_cli("fit", "--config", str(path))
    _run_cli("test", "--config", str(path))
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert set(metrics["per_class_iou"]) == {"0", "1", "2"} and 0 <= metrics["miou"] <= 1
    assert (out / "overlays.png").stat().st_size > 1000
    _run_cli("predict", "--config", str(path))
    predicted = sorted((out / "predictions").glob("*.png"))
    assert len(predicted) == 8 and np.asarray(Image.open(predicted[0])).shape == (32, 32)
