"""Image data for classification and semantic segmentation, as Lightning data modules.

- `ImageFolderDataModule`: a class per sub-folder (``root/<class>/<image>``, or ``root/{train,val,test}/<class>/``);
  any file PIL can read (grayscale, RGB, RGBA, palette, 16-bit, any size) is converted to the model's
  channels; timm's ``create_transform`` makes the train/eval transforms; optional mixup/cutmix (timm ``Mixup``).
- `FashionMNISTDataModule`: Fashion-MNIST (Xiao et al. 2017) read from its IDX gzip files, e.g. those of the
  Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``).
- `SegmentationFolderDataModule`: ``images/`` and ``masks/`` folders (masks: single-channel integer PNGs with
  the same stem), joint spatial augmentation of image and mask with torchvision's ``transforms.v2``.
- `build_aal_slices` / `AALSliceDataModule`: 2D slices of the MNI "colin27" T1 brain (``ch2bet``) with
  AAL atlas labels (Tzourio-Mazoyer et al. 2002), from the Debian package ``mricron-data``, written in
  the segmentation folder format (all 116 regions, or 7 lobes).

Batches: classification ``(images (B, C, H, W) float32, labels (B,) int64)`` -- labels become soft
``(B, num_classes)`` float32 under mixup/cutmix; segmentation ``(images, masks (B, H, W) int64)``;
predict ``(images, paths)``. Bad input raises `VisionDataError` with a one-line message naming the file.
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
import sys
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from mambaverse.atomic import ensure_dir
from mambaverse.errors import ConfigError
from mambaverse.training.sampling import ResumableSampling
from mambaverse.validation import check_int

from .errors import VisionDataError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
MRICRON_TEMPLATES = "/usr/share/mricron/templates"
_SPLITS = ("train", "val", "test")


def image_extensions() -> tuple[str, ...]:
    """Lower-case file extensions PIL can open (".png", ".jpg", ".tif", ".webp", ...)."""
    return tuple(sorted(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN))


def _is_image(path: Path, extensions) -> bool:
    return path.is_file() and path.suffix.lower() in extensions and not path.name.startswith(".")


def _to_8bit(im: Image.Image) -> Image.Image:
    """High-bit-depth grayscale (I;16*, I, F) -> 8-bit "L", scaled by the range of its storage type."""
    arr = np.asarray(im)
    if im.mode.startswith("I;16") or (im.mode == "I" and arr.max(initial=0) > 255):
        scaled = arr.astype(np.float64) / 65535.0 * 255.0
    elif im.mode == "F":  # float images have no fixed range: stretch their own
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scaled = (arr - lo) / (hi - lo if hi > lo else 1.0) * 255.0
    else:
        scaled = arr
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")


def convert_image(im: Image.Image, in_chans: int) -> Image.Image:
    """Any PIL image -> mode "L" (in_chans=1) or "RGB" (in_chans=3). Alpha is dropped; palettes expanded;
    16-bit and float grayscale scaled to 8 bits; grayscale replicated to RGB when 3 channels are asked."""
    if in_chans not in (1, 3):
        raise ConfigError(f"in_chans={in_chans}; expected 1 (grayscale) or 3 (RGB) for image files")
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        im = _to_8bit(im)
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA")
    return im.convert("L" if in_chans == 1 else "RGB")


def load_image(path: str | os.PathLike, in_chans: int = 3) -> Image.Image:
    """Read an image file fully (truncation shows here, not later) and convert it with `convert_image`.

    Raises VisionDataError naming the file when PIL cannot identify or decode it (corrupt, truncated)."""
    try:
        with Image.open(path) as im:
            im.load()
            return convert_image(im, in_chans)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, struct.error) as exc:
        reason = str(exc).split("\n")[0] or type(exc).__name__
        raise VisionDataError(f"{path}: cannot read image ({reason}); expected a complete image file PIL can open") from None


def load_mask(path: str | os.PathLike) -> np.ndarray:
    """Read an integer label mask (H, W) from a single-channel PNG (modes L, P, I, I;16, 1) as int64.

    Raises VisionDataError naming the file when it is unreadable or has colour channels."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("L", "P", "I", "1") and not im.mode.startswith("I;16"):
                raise VisionDataError(f"{path}: mask has mode {im.mode}; expected a single-channel integer PNG "
                                      f"(mode L, P, I or I;16) holding class indices")
            return np.asarray(im).astype(np.int64)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, struct.error) as exc:
        if isinstance(exc, VisionDataError):
            raise
        reason = str(exc).split("\n")[0] or type(exc).__name__
        raise VisionDataError(f"{path}: cannot read mask ({reason}); expected a complete single-channel PNG") from None


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (LeCun's MNIST format; gzip-compressed or plain) as a uint8 numpy array.

    Raises VisionDataError naming the file for a missing file, a bad magic number or truncated data."""
    path = Path(path)
    if not path.is_file():
        raise VisionDataError(f"{path}: IDX file not found")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise VisionDataError(f"{path}: cannot read IDX file ({exc}); expected an IDX (or gzip of one) file") from None
    if len(data) < 4 or data[0:2] != b"\x00\x00" or data[2] != 0x08:
        raise VisionDataError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()}); expected 0x00000801 or 0x00000803")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    need = int(np.prod(dims))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != need:
        raise VisionDataError(f"{path}: IDX file holds {body.size} bytes of data, expected {need} for shape {dims} (truncated?)")
    return body.reshape(dims)


def scan_class_folders(root: str | os.PathLike) -> tuple[list[str], list[tuple[Path, int]]]:
    """``root/<class>/**/<image>`` -> (sorted class names, [(path, class index)]).

    Raises VisionDataError for a missing root, a root with no class folders, or an empty class folder."""
    root = Path(root)
    if not root.is_dir():
        raise VisionDataError(f"{root}: image folder not found; expected a folder with one sub-folder per class")
    exts = image_extensions()
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        loose = any(_is_image(p, exts) for p in root.iterdir())
        raise VisionDataError(f"{root}: " + ("holds images but no class sub-folders" if loose else "folder with no images")
                              + "; expected root/<class>/<image files>")
    samples = []
    for index, name in enumerate(classes):
        files = sorted(p for p in (root / name).rglob("*") if _is_image(p, exts))
        if not files:
            raise VisionDataError(f"{root / name}: empty class folder (no image files); expected images of class {name!r}")
        samples += [(p, index) for p in files]
    return classes, samples


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Every image file under `folder`, sorted. Raises VisionDataError for a missing or image-less folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise VisionDataError(f"{folder}: folder not found; expected a folder of images")
    files = sorted(p for p in folder.rglob("*") if _is_image(p, image_extensions()))
    if not files:
        raise VisionDataError(f"{folder}: folder with no images; expected image files PIL can open")
    return files


class ImageSamples(Dataset):
    """(source, target) pairs -> (transform(image), target). A source is a path or a uint8 array (H, W[, C]).

    With ``return_path`` the target is replaced by the source's path, or by ``names[i]`` when given (for predict)."""

    def __init__(self, samples: Sequence, in_chans: int, transform: Callable, return_path: bool = False,
                 names: Sequence[str] | None = None):
        self.samples, self.in_chans, self.transform, self.return_path = list(samples), in_chans, transform, return_path
        self.names = list(names) if names is not None else None

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        source, target = self.samples[i]
        if isinstance(source, np.ndarray):
            image = convert_image(Image.fromarray(source), self.in_chans)
        else:
            image = load_image(source, self.in_chans)
        if not self.return_path:
            return self.transform(image), target
        return self.transform(image), (self.names[i] if self.names is not None else str(source))


class _SplitLoaders(ResumableSampling):
    """DataLoaders over the train/val/test/predict datasets a data module's setup() made. Training batches (the
    order, and every random crop, flip and jitter) are a function of (seed, epoch, index), kept in checkpoints so
    that a resumed run continues exactly (``mambaverse.training.sampling``)."""

    train_set = val_set = test_set = predict_set = None

    def _drop_last_train(self) -> bool:
        return False

    def _loader(self, dataset, shuffle: bool, drop_last: bool = False):
        if dataset is None:
            raise ConfigError(f"{type(self).__name__}: this split has no data; check the data paths in the config")
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          drop_last=drop_last, generator=torch.Generator().manual_seed(self.seed),
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self):
        if self.train_set is None:
            return self._loader(None, True)  # its one-line error
        return self.resumable_loader(self.train_set, shuffle=True, drop_last=self._drop_last_train())

    def val_dataloader(self):
        return self._loader(self.val_set, False)

    def test_dataloader(self):
        return self._loader(self.test_set, False)

    def predict_dataloader(self):
        return self._loader(self.predict_set, False)


class _ClassificationData(_SplitLoaders, pl.LightningDataModule):
    """Transforms, loaders and mixup shared by the classification data modules."""

    def __init__(self, img_size: int | Sequence[int], in_chans: int, batch_size: int, num_workers: int,
                 mean: Sequence[float] | None, std: Sequence[float] | None, train_transform: dict | None,
                 eval_crop_pct: float, mixup_alpha: float, cutmix_alpha: float, label_smoothing: float, seed: int):
        super().__init__()
        if in_chans not in (1, 3):
            raise ConfigError(f"in_chans={in_chans}; expected 1 or 3")
        self.img_size = tuple(img_size) if isinstance(img_size, (list, tuple)) else (img_size, img_size)
        for side in self.img_size:
            check_int("data.img_size", side, 1, VisionDataError)
        check_int("data.batch_size", batch_size, 1, VisionDataError)
        check_int("data.num_workers", num_workers, 0, VisionDataError)
        self.in_chans, self.batch_size, self.num_workers, self.seed = in_chans, batch_size, num_workers, seed
        self.mean = tuple(mean) if mean is not None else ((0.485, 0.456, 0.406) if in_chans == 3 else (0.5,))
        self.std = tuple(std) if std is not None else ((0.229, 0.224, 0.225) if in_chans == 3 else (0.5,))
        if len(self.mean) != in_chans or len(self.std) != in_chans:
            raise ConfigError(f"mean {self.mean} / std {self.std}: expected {in_chans} value(s) each (in_chans={in_chans})")
        self.train_transform_kwargs = dict(train_transform or {})
        self.eval_crop_pct = eval_crop_pct
        self.mixup_alpha, self.cutmix_alpha, self.label_smoothing = mixup_alpha, cutmix_alpha, label_smoothing
        self.mixup = None
        self.classes: list[str] = []
        self.train_set = self.val_set = self.test_set = self.predict_set = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def transforms(self, training: bool):
        """timm's create_transform for (in_chans, *img_size): RandomResizedCrop + flip + jitter (+ options in
        ``train_transform``) for training, resize + centre crop (``eval_crop_pct``) for evaluation."""
        from timm.data import create_transform

        common = dict(input_size=(self.in_chans, *self.img_size), mean=self.mean, std=self.std)
        if training:
            kwargs = {"color_jitter": 0.4 if self.in_chans == 3 else 0.0, **self.train_transform_kwargs}
            return create_transform(is_training=True, **common, **kwargs)
        return create_transform(is_training=False, crop_pct=self.eval_crop_pct, **common)

    def _make_mixup(self):
        if (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.mixup is None:
            from timm.data import Mixup

            self.mixup = Mixup(mixup_alpha=self.mixup_alpha, cutmix_alpha=self.cutmix_alpha,
                               label_smoothing=self.label_smoothing, num_classes=self.num_classes)

    def on_after_batch_transfer(self, batch, dataloader_idx):
        # mixup/cutmix on training batches only (timm's Mixup: soft targets (B, num_classes))
        if self.mixup is not None and self.trainer is not None and self.trainer.training:
            images, labels = batch
            return self.mixup(images, labels)
        return batch

    def _drop_last_train(self) -> bool:
        return self.mixup is not None  # mixup pairs each image with the reversed batch: an even batch size


def _split_indices(labels: Sequence[int], fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Stratified split of indices into len(fractions) parts (scikit-learn), the first taking the rest."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    labels = np.asarray(labels)
    parts, rest, rest_labels = [], index, labels
    remaining = 1.0
    for frac in fractions[1:][::-1]:
        if frac <= 0:
            parts.append(np.array([], dtype=int))
            continue
        n = max(1, int(round(frac * len(index))))
        counts = np.bincount(rest_labels)
        stratify = rest_labels if counts[counts > 0].min() >= 2 and n >= len(np.unique(rest_labels)) else None
        rest, taken, rest_labels, _ = train_test_split(rest, rest_labels, test_size=n, random_state=seed, stratify=stratify)
        parts.append(np.sort(taken))
        remaining -= frac
    return [np.sort(rest), *parts[::-1]]


class ImageFolderDataModule(_ClassificationData):
    """Image classification from folders, a class per sub-folder.

    Layouts: ``root/{train,val,test}/<class>/<images>`` (splits as given; val/test optional), or
    ``root/<class>/<images>`` split by ``val_fraction``/``test_fraction`` (stratified, seeded).
    Images of any PIL-readable format and mode are converted to ``in_chans`` (1 or 3) channels.

    Args:
        root: the folder.
        img_size: model input side (int) or (H, W).
        in_chans: 1 (grayscale) or 3 (RGB).
        batch_size, num_workers: DataLoader settings.
        val_fraction, test_fraction: held-out fractions for the single-folder layout.
        mean, std: normalisation (default ImageNet's for RGB, 0.5 for grayscale).
        train_transform: extra keyword arguments of timm's ``create_transform`` for training (e.g.
            ``{scale: [0.5, 1.0], auto_augment: rand-m9-mstd0.5, re_prob: 0.25}``).
        eval_crop_pct: centre-crop fraction at evaluation (1.0 = resize only).
        mixup_alpha, cutmix_alpha, label_smoothing: timm ``Mixup`` (off when both alphas are 0).
        predict_root: a folder of images (any layout) for ``mambaverse predict``.
        seed: split and shuffle seed.
    Raises:
        VisionDataError: missing root, no class folders, an empty class folder, unreadable images (when read).
    """

    def __init__(self, root: str, img_size: int | Sequence[int] = 224, in_chans: int = 3, batch_size: int = 64,
                 num_workers: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.0,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 train_transform: dict | None = None, eval_crop_pct: float = 0.875, mixup_alpha: float = 0.0,
                 cutmix_alpha: float = 0.0, label_smoothing: float = 0.0, predict_root: str | None = None,
                 seed: int = 0):
        super().__init__(img_size, in_chans, batch_size, num_workers, mean, std, train_transform, eval_crop_pct,
                         mixup_alpha, cutmix_alpha, label_smoothing, seed)
        self.root, self.predict_root = Path(root), predict_root
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self._scan()

    def _scan(self):
        if (self.root / "train").is_dir():
            self.classes, train = scan_class_folders(self.root / "train")
            splits = {"train": train}
            for name in ("val", "test"):
                if (self.root / name).is_dir():
                    classes, samples = scan_class_folders(self.root / name)
                    unknown = sorted(set(classes) - set(self.classes))
                    if unknown:
                        raise VisionDataError(f"{self.root / name}: class folders {unknown} are not in {self.root / 'train'}")
                    index = {c: i for i, c in enumerate(self.classes)}
                    splits[name] = [(p, index[classes[y]]) for p, y in samples]
        else:
            self.classes, samples = scan_class_folders(self.root)
            parts = _split_indices([y for _, y in samples], [1 - self.val_fraction - self.test_fraction,
                                                             self.val_fraction, self.test_fraction], self.seed)
            splits = {name: [samples[i] for i in part] for name, part in zip(_SPLITS, parts) if len(part)}
        self.split_samples = splits

    def setup(self, stage: str | None = None):
        self._make_mixup()
        train_tf, eval_tf = self.transforms(True), self.transforms(False)
        s = self.split_samples
        self.train_set = ImageSamples(s["train"], self.in_chans, train_tf)
        self.val_set = ImageSamples(s["val"], self.in_chans, eval_tf) if "val" in s else None
        self.test_set = ImageSamples(s["test"], self.in_chans, eval_tf) if "test" in s else None
        if stage == "predict":
            if not self.predict_root:
                raise ConfigError("ImageFolderDataModule: predict needs data.predict_root, a folder of images")
            self.predict_set = ImageSamples([(p, 0) for p in list_images(self.predict_root)], self.in_chans, eval_tf,
                                            return_path=True)


class FashionMNISTDataModule(_ClassificationData):
    """Fashion-MNIST (60,000 train + 10,000 test grayscale 28x28 images, 10 classes) from its IDX gzip files.

    The validation set is ``val_size`` images held out of the training file (stratified, seeded);
    the test set is the official t10k file. ``train_subset``/``test_subset`` take seeded stratified subsets
    for quick runs. Images keep 28x28 unless ``img_size`` says otherwise (resized by the transforms).

    Args:
        root: folder with ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`` (Debian ``dataset-fashion-mnist``).
        img_size, in_chans, batch_size, num_workers, mean, std, train_transform, mixup_alpha, cutmix_alpha,
        label_smoothing, seed: as `ImageFolderDataModule` (defaults: Fashion-MNIST's mean 0.286 / std 0.353;
            training crops keep 70-100% of the image, no colour jitter).
        val_size: images held out of the training file for validation.
        train_subset, test_subset: use only this many training / test images (None = all).
    Raises:
        VisionDataError: missing or malformed IDX files.
    """

    def __init__(self, root: str = FASHION_MNIST_DIR, img_size: int | Sequence[int] = 28, in_chans: int = 1,
                 batch_size: int = 128, num_workers: int = 0, val_size: int = 5000, train_subset: int | None = None,
                 test_subset: int | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, train_transform: dict | None = None, mixup_alpha: float = 0.0,
                 cutmix_alpha: float = 0.0, label_smoothing: float = 0.0, seed: int = 0):
        gray = in_chans == 1
        super().__init__(img_size, in_chans, batch_size, num_workers,
                         mean if mean is not None else ((0.286,) if gray else (0.286,) * 3),
                         std if std is not None else ((0.353,) if gray else (0.353,) * 3),
                         {"scale": (0.7, 1.0), "ratio": (0.9, 1.1), "color_jitter": 0.0, **(train_transform or {})},
                         1.0, mixup_alpha, cutmix_alpha, label_smoothing, seed)
        # sklearn's split would fail deep inside (or a subset of 0 would train on nothing): check up front
        check_int("data.val_size", val_size, 1, VisionDataError)
        for key, value in (("train_subset", train_subset), ("test_subset", test_subset)):
            if value is not None:
                check_int(f"data.{key}", value, 1, VisionDataError)
        self.root, self.val_size = Path(root), val_size
        self.train_subset, self.test_subset = train_subset, test_subset
        self.classes = list(FASHION_MNIST_CLASSES)

    def _load(self, prefix):
        images = read_idx(self.root / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(self.root / f"{prefix}-labels-idx1-ubyte.gz")
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise VisionDataError(f"{self.root}: {prefix} images {images.shape} and labels {labels.shape} do not pair; "
                                  f"expected (N, H, W) images and N labels")
        if labels.max() >= len(self.classes):
            raise VisionDataError(f"{self.root / f'{prefix}-labels-idx1-ubyte.gz'}: label {labels.max()} outside 0..9")
        return images, labels.astype(np.int64)

    @staticmethod
    def _subset(labels, n, seed):
        if n is None or n >= len(labels):
            return np.arange(len(labels))
        return _split_indices(labels, [1 - n / len(labels), n / len(labels)], seed)[1]

    def setup(self, stage: str | None = None):
        self._make_mixup()
        train_tf, eval_tf = self.transforms(True), self.transforms(False)
        images, labels = self._load("train")
        if self.val_size >= len(labels):
            raise VisionDataError(f"data.val_size: got {self.val_size}; expected fewer than the {len(labels)} images "
                                  f"of {self.root / 'train-images-idx3-ubyte.gz'} (the rest train)")
        train_idx, val_idx = _split_indices(labels, [1 - self.val_size / len(labels), self.val_size / len(labels)], self.seed)
        train_idx = train_idx[self._subset(labels[train_idx], self.train_subset, self.seed)]
        self.train_set = ImageSamples([(images[i], int(labels[i])) for i in train_idx], self.in_chans, train_tf)
        self.val_set = ImageSamples([(images[i], int(labels[i])) for i in val_idx], self.in_chans, eval_tf)
        test_images, test_labels = self._load("t10k")
        test_idx = self._subset(test_labels, self.test_subset, self.seed)
        test = [(test_images[i], int(test_labels[i])) for i in test_idx]
        self.test_set = ImageSamples(test, self.in_chans, eval_tf)
        # predict: the test images, each named "<file>#<index>"
        names = [f"{self.root / 't10k-images-idx3-ubyte.gz'}#{i}" for i in test_idx]
        self.predict_set = ImageSamples(test, self.in_chans, eval_tf, return_path=True, names=names)


# -- segmentation ------------------------------------------------------------------------------------

class SegmentationPairs(Dataset):
    """(image path, mask path) pairs -> (image (C, H, W) float32 normalised, mask (H, W) int64), both through
    the same torchvision v2 spatial transform (masks resampled with nearest neighbour).

    Raises VisionDataError (naming the files) for unreadable files, a mask whose size differs from its
    image, or labels outside 0..num_classes-1 other than ``ignore_index``."""

    def __init__(self, pairs: Sequence[tuple[Path, Path | None]], in_chans: int, num_classes: int,
                 ignore_index: int | None, transform: Callable, return_path: bool = False):
        self.pairs, self.in_chans, self.num_classes = list(pairs), in_chans, num_classes
        self.ignore_index, self.transform, self.return_path = ignore_index, transform, return_path

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        from torchvision import tv_tensors
        from torchvision.transforms.v2 import functional as TF

        image_path, mask_path = self.pairs[i]
        image = tv_tensors.Image(TF.pil_to_tensor(load_image(image_path, self.in_chans)))
        if mask_path is None:  # predict: no mask
            return self.transform(image), str(image_path)
        mask = load_mask(mask_path)
        check_mask(mask, mask_path, image_path, tuple(image.shape[-2:]), self.num_classes, self.ignore_index)
        image, mask = self.transform(image, tv_tensors.Mask(torch.from_numpy(mask)))
        return image, (str(image_path) if self.return_path else mask.as_subclass(torch.Tensor))


def check_mask(mask: np.ndarray, mask_path, image_path, image_hw: tuple[int, int], num_classes: int,
               ignore_index: int | None):
    """Raise VisionDataError if `mask` (H, W) is not the image's size or holds labels outside the classes."""
    if tuple(mask.shape) != tuple(image_hw):
        raise VisionDataError(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image {image_path} "
                              f"is {image_hw[1]}x{image_hw[0]}; expected the same size")
    labels = np.unique(mask)
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if ignore_index is not None:
        bad = bad[bad != ignore_index]
    if bad.size:
        ignore = f" or ignore_index {ignore_index}" if ignore_index is not None else ""
        raise VisionDataError(f"{mask_path}: mask labels {bad.tolist()[:8]} are outside 0..{num_classes - 1}{ignore} "
                              f"(num_classes={num_classes})")


def pair_images_and_masks(folder: Path) -> list[tuple[Path, Path]]:
    """``folder/images/<name>.<ext>`` with ``folder/masks/<name>.png`` -> sorted pairs.

    Raises VisionDataError for a missing folder, no images, or an image without its mask."""
    images = list_images(folder / "images")
    mask_dir = folder / "masks"
    if not mask_dir.is_dir():
        raise VisionDataError(f"{mask_dir}: mask folder not found; expected masks/<image name>.png next to images/")
    masks = {p.relative_to(mask_dir).with_suffix(""): p for p in mask_dir.rglob("*") if p.is_file()}
    pairs = []
    for image in images:
        key = image.relative_to(folder / "images").with_suffix("")
        if key not in masks:
            raise VisionDataError(f"{image}: no mask {mask_dir / key}.png; expected one integer PNG per image")
        pairs.append((image, masks[key]))
    return pairs


class SegmentationFolderDataModule(_SplitLoaders, pl.LightningDataModule):
    """Semantic segmentation from ``images/`` + ``masks/`` folders (a mask: single-channel integer PNG, pixel =
    class index, the same stem and size as its image).

    Layouts: ``root/{train,val,test}/{images,masks}`` (val/test optional), or ``root/{images,masks}`` split by
    ``val_fraction``/``test_fraction`` (seeded). Optional ``root/classes.json`` (a list of names) names the classes.
    Training: random resized crop (``scale``) to ``img_size`` and horizontal flips (``hflip``), applied to
    image and mask together; evaluation: resize to ``img_size`` (masks nearest), so metrics are at that size.

    Args:
        root: the folder.
        num_classes: classes including background (mask values 0..num_classes-1).
        ignore_index: a mask value that marks unlabelled pixels (excluded from loss and metrics), or None.
        img_size: model input side or (H, W).
        in_chans: 1 or 3.
        batch_size, num_workers: DataLoader settings.
        val_fraction, test_fraction: held-out fractions for the single-folder layout.
        scale: area range of the training crops; hflip: flip probability (0 for images with handedness).
        mean, std: normalisation (default 0.5 / 0.25 per channel).
        check_masks: read every mask once in setup, so bad masks fail before training with a one-line error.
        train_subset: use only the first N training pairs (seeded shuffle) for quick runs.
        predict_root: a folder of images for ``mambaverse predict``.
        seed: split and shuffle seed.
    Raises:
        VisionDataError: missing folders or masks, unreadable files, size mismatches, labels outside the classes.
    """

    def __init__(self, root: str, num_classes: int, ignore_index: int | None = 255,
                 img_size: int | Sequence[int] = 224, in_chans: int = 3, batch_size: int = 16, num_workers: int = 0,
                 val_fraction: float = 0.1, test_fraction: float = 0.1, scale: Sequence[float] = (0.5, 1.0),
                 hflip: float = 0.5, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 check_masks: bool = True, train_subset: int | None = None, predict_root: str | None = None,
                 seed: int = 0):
        super().__init__()
        if in_chans not in (1, 3):
            raise ConfigError(f"in_chans={in_chans}; expected 1 or 3")
        if num_classes < 2:
            raise ConfigError(f"num_classes={num_classes}; expected at least 2 (background and one class)")
        self.root, self.num_classes, self.ignore_index = Path(root), num_classes, ignore_index
        self.img_size = tuple(img_size) if isinstance(img_size, (list, tuple)) else (img_size, img_size)
        self.in_chans, self.batch_size, self.num_workers = in_chans, batch_size, num_workers
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.scale, self.hflip = tuple(scale), hflip
        self.mean = tuple(mean) if mean is not None else (0.5,) * in_chans
        self.std = tuple(std) if std is not None else (0.25,) * in_chans
        self.check_masks, self.train_subset = check_masks, train_subset
        self.predict_root, self.seed = predict_root, seed
        self.train_set = self.val_set = self.test_set = self.predict_set = None
        self.split_pairs: dict[str, list] | None = None

    @property
    def classes(self) -> list[str]:
        names_file = self.root / "classes.json"
        if names_file.is_file():
            names = json.loads(names_file.read_text())
            if isinstance(names, list) and len(names) == self.num_classes:
                return [str(n) for n in names]
        return [str(i) for i in range(self.num_classes)]

    def _scan(self):
        if (self.root / "train").is_dir():
            splits = {s: pair_images_and_masks(self.root / s) for s in _SPLITS if (self.root / s).is_dir()}
        else:
            pairs = pair_images_and_masks(self.root)
            order = np.random.default_rng(self.seed).permutation(len(pairs))
            n_val, n_test = round(self.val_fraction * len(pairs)), round(self.test_fraction * len(pairs))
            cut = [n_val, n_val + n_test]
            splits = {"val": [pairs[i] for i in sorted(order[:cut[0]])],
                      "test": [pairs[i] for i in sorted(order[cut[0]:cut[1]])],
                      "train": [pairs[i] for i in sorted(order[cut[1]:])]}
            splits = {k: v for k, v in splits.items() if v}
        if self.train_subset is not None and "train" in splits and self.train_subset < len(splits["train"]):
            order = np.random.default_rng(self.seed).permutation(len(splits["train"]))[:self.train_subset]
            splits["train"] = [splits["train"][i] for i in sorted(order)]
        return splits

    def _check_all(self, splits):
        for pairs in splits.values():
            for image_path, mask_path in pairs:
                try:
                    with Image.open(image_path) as im:
                        size = im.size
                except (UnidentifiedImageError, OSError) as exc:
                    raise VisionDataError(f"{image_path}: cannot read image ({exc}); expected an image file PIL can open") from None
                check_mask(load_mask(mask_path), mask_path, image_path, (size[1], size[0]), self.num_classes,
                           self.ignore_index)

    def transforms(self, training: bool):
        """torchvision v2 joint transforms (image + mask): crop/flip for training, resize for evaluation."""
        from torchvision.transforms import v2

        spatial = ([v2.RandomResizedCrop(self.img_size, scale=self.scale, antialias=True),
                    v2.RandomHorizontalFlip(self.hflip)] if training else [v2.Resize(self.img_size, antialias=True)])
        return v2.Compose([*spatial, v2.ToDtype({"others": None, **_image_float()}, scale=True),
                           v2.Normalize(self.mean, self.std)])

    def setup(self, stage: str | None = None):
        if self.split_pairs is None:
            self.split_pairs = self._scan()
            if self.check_masks:
                self._check_all(self.split_pairs)
        s, train_tf, eval_tf = self.split_pairs, self.transforms(True), self.transforms(False)
        make = lambda name, tf: (SegmentationPairs(s[name], self.in_chans, self.num_classes, self.ignore_index, tf)  # noqa: E731
                                 if name in s else None)
        self.train_set, self.val_set, self.test_set = make("train", train_tf), make("val", eval_tf), make("test", eval_tf)
        if stage == "predict":
            if not self.predict_root:
                raise ConfigError(f"{type(self).__name__}: predict needs data.predict_root, a folder of images")
            pairs = [(p, None) for p in list_images(self.predict_root)]
            self.predict_set = SegmentationPairs(pairs, self.in_chans, self.num_classes, self.ignore_index, eval_tf)

def _image_float():
    from torchvision import tv_tensors

    return {tv_tensors.Image: torch.float32}


# -- AAL brain slices ---------------------------------------------------------------------------------

# AAL region -> lobe, by name prefix (the usual grouping of the AAL regions into lobes)
AAL_LOBES = ("background", "frontal", "limbic_insula", "occipital", "parietal", "subcortical", "temporal", "cerebellum")
_LOBE_PREFIXES = {
    "frontal": ("Precentral", "Frontal", "Rolandic_Oper", "Supp_Motor_Area", "Olfactory", "Rectus", "Paracentral_Lobule"),
    "limbic_insula": ("Insula", "Cingulum", "Hippocampus", "ParaHippocampal", "Amygdala"),
    "occipital": ("Calcarine", "Cuneus", "Lingual", "Occipital", "Fusiform"),
    "parietal": ("Postcentral", "Parietal", "SupraMarginal", "Angular", "Precuneus"),
    "subcortical": ("Caudate", "Putamen", "Pallidum", "Thalamus"),
    "temporal": ("Heschl", "Temporal"),
    "cerebellum": ("Cerebelum", "Vermis"),
}
_AXES = {"sagittal": 0, "coronal": 1, "axial": 2}


def aal_label_names(labels_txt: Path) -> dict[int, str]:
    """Parse mricron's ``aal.nii.txt`` (``index name code`` per line) -> {index: name}."""
    names = {}
    for line_no, line in enumerate(labels_txt.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2 or not parts[0].isdigit():
            raise VisionDataError(f"{labels_txt}:{line_no}: expected 'index name [code]', got {line!r}")
        names[int(parts[0])] = parts[1]
    return names


def _lobe_of(name: str, path) -> int:
    for lobe, prefixes in _LOBE_PREFIXES.items():
        if name.startswith(prefixes):
            return AAL_LOBES.index(lobe)
    raise VisionDataError(f"{path}: AAL region {name!r} has no lobe; expected an AAL (116-region) label list")


def build_aal_slices(out_dir: str | os.PathLike, labels: str = "lobes", axes: Sequence[str] = ("axial", "coronal"),
                     step: int = 2, min_brain_fraction: float = 0.15, block: int = 10,
                     templates: str | os.PathLike = MRICRON_TEMPLATES, overwrite: bool = False) -> dict:
    """Cut 2D slices of the ``ch2bet`` T1 brain with their AAL labels into the segmentation folder format.

    Every `step`-th slice along each of `axes` whose brain covers at least `min_brain_fraction` of the
    slice becomes ``<split>/images/<axis>_<index>.png`` (8-bit grayscale, intensities scaled by the
    volume's 99.5th percentile) and ``<split>/masks/<axis>_<index>.png`` (mode L class indices). Slices are
    assigned to splits in contiguous blocks of `block` slices (8 train : 1 val : 1 test, round robin),
    so neighbouring, nearly identical slices rarely straddle splits. One brain only: the split measures
    generalisation to unseen slices of the same subject, not to other subjects.

    Args:
        out_dir: output folder (written to a temporary sibling, then renamed: never half-written).
        labels: "regions" (background + the 116 AAL regions, 117 classes) or "lobes" (background + 7 lobes).
        axes: any of "axial", "coronal", "sagittal".
        templates: folder holding ``ch2bet.nii.gz``, ``aal.nii.gz`` and ``aal.nii.txt`` (mricron-data).
        overwrite: rebuild even if `out_dir` exists.
    Returns: {"classes": names, "counts": {split: n}, "out_dir": str}.
    Raises: VisionDataError for missing or mismatched volumes; ConfigError for unknown labels or axes.
    """
    out_dir, templates = Path(out_dir), Path(templates)
    if labels not in ("regions", "lobes"):
        raise ConfigError(f"labels={labels!r}; expected 'regions' or 'lobes'")
    unknown = sorted(set(axes) - set(_AXES))
    if unknown:
        raise ConfigError(f"axes {unknown}; expected any of {sorted(_AXES)}")
    check_int("step", step, 1, ConfigError)  # 0 was range()'s ValueError; a negative step cut no slice
    check_int("block", block, 1, ConfigError)
    if out_dir.exists() and not out_dir.is_dir():  # it would be found only at the final swap, after the work
        raise VisionDataError(f"out_dir {out_dir}: is a file; expected a folder (new or built before)")
    if (out_dir / "classes.json").is_file() and not overwrite:
        names = json.loads((out_dir / "classes.json").read_text())
        counts = {s: len(list((out_dir / s / "images").glob("*.png"))) for s in _SPLITS}
        return {"classes": names, "counts": counts, "out_dir": str(out_dir)}
    ensure_dir(out_dir.parent, f"out_dir {out_dir}: its folder", probe=True)  # before any work: one-line error
    import nibabel as nib  # only to build; a built folder needs no nibabel

    paths = {k: templates / f for k, f in (("t1", "ch2bet.nii.gz"), ("atlas", "aal.nii.gz"), ("names", "aal.nii.txt"))}
    for path in paths.values():
        if not path.is_file():
            raise VisionDataError(f"{path}: not found; expected the Debian package mricron-data (apt-get install mricron-data)")
    try:
        t1 = np.asarray(nib.load(paths["t1"]).dataobj, dtype=np.float32)
        atlas = np.asarray(nib.load(paths["atlas"]).dataobj).astype(np.int64)
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for a bad file
        raise VisionDataError(f"{templates}: cannot read the NIfTI volumes ({type(exc).__name__}: {exc})") from None
    if t1.shape != atlas.shape:
        raise VisionDataError(f"{paths['atlas']}: atlas grid {atlas.shape} differs from {paths['t1']} {t1.shape}")
    region_names = aal_label_names(paths["names"])
    if labels == "lobes":
        lut = np.zeros(int(atlas.max()) + 1, dtype=np.uint8)
        for index, name in region_names.items():
            if index < len(lut):
                lut[index] = _lobe_of(name, paths["names"])
        target, classes = lut[atlas], list(AAL_LOBES)
    else:
        target = atlas.astype(np.uint8)
        classes = ["background"] + [region_names.get(i, f"region_{i}") for i in range(1, int(atlas.max()) + 1)]
    scale = float(np.percentile(t1[t1 > 0], 99.5)) if (t1 > 0).any() else 1.0
    image8 = np.clip(t1 / scale * 255.0, 0, 255).astype(np.uint8)

    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    counts = dict.fromkeys(_SPLITS, 0)
    try:
        for split in _SPLITS:
            (tmp / split / "images").mkdir(parents=True)
            (tmp / split / "masks").mkdir(parents=True)
        for axis_name in axes:
            axis = _AXES[axis_name]
            for index in range(0, t1.shape[axis], step):
                mask = np.rot90(np.take(target, index, axis=axis))  # rows = superior..inferior / anterior..posterior
                if (mask > 0).mean() < min_brain_fraction:
                    continue
                image = np.rot90(np.take(image8, index, axis=axis))
                split = _SPLITS[{8: 1, 9: 2}.get((index // block) % 10, 0)]
                stem = f"{axis_name}_{index:03d}"
                Image.fromarray(np.ascontiguousarray(image), "L").save(tmp / split / "images" / f"{stem}.png")
                Image.fromarray(np.ascontiguousarray(mask), "L").save(tmp / split / "masks" / f"{stem}.png")
                counts[split] += 1
        empty = [split for split, n in counts.items() if n == 0]
        if empty:  # a set without training or test slices is of no use (a step larger than the volume)
            raise VisionDataError(f"step={step}, axes={list(axes)}: no slice in split(s) {empty} ({counts}); expected "
                                  f"a smaller step (the volume has {min(t1.shape)} to {max(t1.shape)} slices per axis)")
        (tmp / "classes.json").write_text(json.dumps(classes))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"classes": classes, "counts": counts, "out_dir": str(out_dir)}


class AALSliceDataModule(SegmentationFolderDataModule):
    """`SegmentationFolderDataModule` over AAL brain slices, built on first use into `cache_dir` by
    `build_aal_slices` (``labels``, ``axes``, ``step``). ``num_classes`` follows ``labels`` (8 for lobes,
    117 for regions); other arguments as `SegmentationFolderDataModule` (grayscale, no flips by default:
    the AAL regions are left/right specific)."""

    def __init__(self, cache_dir: str = "runs/data/aal_slices", labels: str = "lobes",
                 axes: Sequence[str] = ("axial", "coronal"), step: int = 2, img_size: int | Sequence[int] = 224,
                 batch_size: int = 16, num_workers: int = 0, scale: Sequence[float] = (0.6, 1.0), hflip: float = 0.0,
                 train_subset: int | None = None, templates: str = MRICRON_TEMPLATES, seed: int = 0):
        if labels not in ("regions", "lobes"):
            raise ConfigError(f"labels={labels!r}; expected 'regions' or 'lobes'")
        super().__init__(cache_dir, num_classes=len(AAL_LOBES) if labels == "lobes" else 117, ignore_index=None,
                         img_size=img_size, in_chans=1, batch_size=batch_size, num_workers=num_workers, scale=scale,
                         hflip=hflip, check_masks=False, train_subset=train_subset, seed=seed)
        self.labels, self.axes, self.step, self.templates = labels, tuple(axes), step, templates

    def prepare_data(self):
        build_aal_slices(self.root, self.labels, self.axes, self.step, templates=self.templates)

    def setup(self, stage: str | None = None):
        self.prepare_data()  # idempotent; also covers direct use without a Trainer
        super().setup(stage)


def aal_slices_main(argv: list[str] | None = None) -> int:
    """Cut AAL-labelled 2D slices of the colin27 brain (mricron-data) into an image/mask folder set.

    ``mambaverse aal-slices OUT_DIR [--labels lobes|regions] [--axes axial coronal] [--step 2]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="mambaverse aal-slices",
                                     description="Cut AAL-labelled 2D brain slices (mricron-data) into images/ + masks/ folders.")
    parser.add_argument("out_dir")
    parser.add_argument("--labels", choices=("lobes", "regions"), default="lobes")
    parser.add_argument("--axes", nargs="+", choices=sorted(_AXES), default=["axial", "coronal"])
    parser.add_argument("--step", type=int, default=2)
    parser.add_argument("--templates", default=MRICRON_TEMPLATES)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        info = build_aal_slices(args.out_dir, args.labels, args.axes, args.step, templates=args.templates,
                                overwrite=args.overwrite)
    except (VisionDataError, ConfigError) as err:
        print(f"mambaverse aal-slices: error: {err}", file=sys.stderr)
        return 2
    print(f"{info['out_dir']}: {info['counts']} slices, {len(info['classes'])} classes")
    return 0
