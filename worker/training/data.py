"""Datasets as uint8 tensors, and the device-resident batches the loops train on.

``load_dataset`` turns a dataset spec into ``Splits``: uint8 images ``(N, C, H, W)`` and int64
labels for training, test and (with ``val_fraction``) validation. Images are decoded once:
torchvision datasets and image folders are cached as a tensor file under ``DATA_DIR/.cache``.

- ``digits``: scikit-learn's 8x8 digits, values 0..16 scaled to 0..255 (upscaled, bilinear, to
  ``image_size``); a fixed stratified 80/20 train/test split with seed 0 (1,437 / 360 images).
- ``cifar10``, ``cifar100``, ``mnist``, ``fashion_mnist``: torchvision's classes reading
  ``DATA_DIR/<name>`` (their own file layout, their own checksums).
- ``imagefolder``: ``DATA_DIR/<path>/<class>/<image>``, resized to ``image_size`` and RGB. A
  folder with ``train/`` and ``test/`` inside uses them; otherwise a stratified 80/20 split with
  seed 0. Paths that resolve outside ``DATA_DIR`` (symlinks included) are refused.
- ``synthetic``: seeded random images (the same for every training seed) whose class decides a
  smooth mean pattern under the noise, so a model can learn it; 80/20 split.

Options, in this order, on the training split: ``limit`` (first N), ``val_fraction``
(stratified hold-out), ``labels_per_class`` / ``label_fraction`` (stratified subset); the
subsets are seeded by the training seed.

On the device, ``epoch_batches`` shuffles with ``randperm`` from a generator seeded by
(seed, epoch) and ``step_generator`` gives each step's generator for augmentation and noise,
seeded by (seed, epoch, step): a run resumed mid-epoch draws exactly what it would have drawn.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from app.core.errors import first_line
from app.core.registry import Registry
from app.core.specs import AnyDataset, DigitsDataset, ImageFolderDataset, SyntheticDataset, TorchvisionDataset
from app.core.specs.datasets import TORCHVISION_SOURCES

from .checkpoints import save_torch
from .errors import DatasetError

CACHE_VERSION = 1
"""Bump when the cached tensors' layout changes; old cache files are then ignored."""


@dataclass
class Images:
    """Images ``(N, C, H, W)`` uint8 and their labels ``(N,)`` int64, on one device."""

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, index: Tensor) -> Images:
        return Images(self.x[index], self.y[index])

    def to(self, device: torch.device | str) -> Images:
        return Images(self.x.to(device), self.y.to(device))


@dataclass
class Splits:
    train: Images
    test: Images
    val: Images | None
    num_classes: int


def mix_seed(*parts: int | str) -> int:
    """A 63-bit seed from several parts, so (seed, epoch, step) streams never collide."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


Loader = Callable[[Any, Path], tuple[Images, Images, int]]
LOADERS: Registry[Loader] = Registry("dataset")
"""Dataset name -> (its spec, DATA_DIR) -> (train images, test images, class count)."""


def load_dataset(spec: AnyDataset, data_dir: Path, seed: int) -> Splits:
    """Load the dataset a job asks for and apply its options; raises DatasetError."""
    train, test, num_classes = LOADERS[spec.name](spec, data_dir)

    if spec.limit is not None:
        train = train.subset(torch.arange(min(spec.limit, len(train))))
    val = None
    if spec.val_fraction > 0:
        val_index = _stratified_pick(train.y, lambda n: round(n * spec.val_fraction), mix_seed(seed, "val"))
        keep = torch.ones(len(train), dtype=torch.bool)
        keep[val_index] = False
        if len(val_index) > 0:
            val, train = train.subset(val_index), train.subset(keep.nonzero().squeeze(1))
    if spec.labels_per_class is not None:
        per_class = spec.labels_per_class
        train = train.subset(_stratified_pick(train.y, lambda n: min(n, per_class), mix_seed(seed, "labels")))
    elif spec.label_fraction is not None:
        fraction = spec.label_fraction
        pick = _stratified_pick(train.y, lambda n: max(1, round(n * fraction)), mix_seed(seed, "labels"))
        train = train.subset(pick)
    if len(train) < 2 or len(test) < 1:
        raise DatasetError(f"dataset '{spec.name}' leaves {len(train)} training images: at least 2 are needed")
    return Splits(train, test, val, num_classes)


def _stratified_pick(labels: Tensor, count: Callable[[int], int], seed: int) -> Tensor:
    """Indices of ``count(n)`` randomly chosen items of each class (n = the class's size), sorted."""
    generator = torch.Generator().manual_seed(seed)
    picked = []
    for label in torch.unique(labels).tolist():
        members = (labels == label).nonzero().squeeze(1)
        order = torch.randperm(len(members), generator=generator)
        picked.append(members[order[: count(len(members))]])
    return torch.cat(picked).sort().values


def _split_80_20(images: Images) -> tuple[Images, Images]:
    from sklearn.model_selection import train_test_split

    index = np.arange(len(images))
    train_index, test_index = train_test_split(index, test_size=0.2, stratify=images.y.numpy(), random_state=0)
    return images.subset(torch.from_numpy(np.sort(train_index))), images.subset(torch.from_numpy(np.sort(test_index)))


# --- the sources ------------------------------------------------------------------


@LOADERS.register("digits")
def _load_digits(spec: DigitsDataset, _data_dir: Path) -> tuple[Images, Images, int]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    if spec.image_size != x.shape[-1]:  # bilinear upscaling, for networks made for larger images (a dcgan)
        size = (spec.image_size, spec.image_size)
        x = torch.nn.functional.interpolate(x.float(), size=size, mode="bilinear", align_corners=False)
        x = x.round().clamp(0, 255).to(torch.uint8)
    train, test = _split_80_20(Images(x, torch.from_numpy(digits.target.astype(np.int64))))
    return train, test, spec.class_count()


def _load_torchvision(spec: TorchvisionDataset, data_dir: Path) -> tuple[Images, Images, int]:
    source = spec.source
    cache = data_dir / ".cache" / f"{spec.name}-v{CACHE_VERSION}.pt"
    cached = _read_cache(cache)
    if cached is not None:
        return cached[0], cached[1], source.classes

    from torchvision import datasets

    dataset_class = getattr(datasets, source.dataset_class)
    root = data_dir / spec.name
    splits = []
    for train in (True, False):
        try:
            ds = dataset_class(root=str(root), train=train, download=spec.download)
        except (RuntimeError, OSError, ValueError, pickle.UnpicklingError, EOFError) as e:
            if spec.download:
                raise DatasetError(f"could not download {source.title} to {root}: {first_line(e)}") from e
            raise DatasetError(
                f"{source.title} not found or unreadable at {root}: put {source.expected} there "
                "or submit with dataset.download=true"
            ) from e
        data = ds.data
        if isinstance(data, np.ndarray):  # CIFAR: (N, H, W, C) uint8
            x = torch.from_numpy(np.ascontiguousarray(data.transpose(0, 3, 1, 2)))
        else:  # MNIST: (N, H, W) uint8 tensor
            x = data.unsqueeze(1).contiguous()
        y = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
        splits.append(Images(x, y))
    _write_cache(cache, splits[0], splits[1])
    return splits[0], splits[1], source.classes


for _name in TORCHVISION_SOURCES:
    LOADERS.add(_name, _load_torchvision)


@LOADERS.register("imagefolder")
def _load_imagefolder(spec: ImageFolderDataset, data_dir: Path) -> tuple[Images, Images, int]:
    from torchvision.datasets import ImageFolder

    base = data_dir.resolve()
    root = (data_dir / spec.path).resolve()
    if not root.is_relative_to(base):
        raise DatasetError(f"imagefolder path '{spec.path}' resolves to {root}, outside DATA_DIR ({base}): refused")
    if not root.is_dir():
        raise DatasetError(
            f"image folder not found at {data_dir / spec.path}: put one folder per class of images there "
            "(or train/ and test/ folders that each hold one folder per class)"
        )
    has_split = (root / "train").is_dir() and (root / "test").is_dir()
    folders = [root / "train", root / "test"] if has_split else [root]
    try:
        found = [ImageFolder(str(folder)) for folder in folders]
    except (FileNotFoundError, OSError) as e:
        raise DatasetError(f"no images at {data_dir / spec.path}: {first_line(e)}") from e
    classes = found[0].classes
    files: list[list[tuple[Path, int]]] = []
    for folder in found:
        index = {name: classes.index(name) for name in folder.classes if name in classes}
        unknown = sorted(set(folder.classes) - set(index))
        if unknown:
            raise DatasetError(f"test classes {unknown} in {data_dir / spec.path} have no training folder")
        samples = [(Path(p), index[folder.classes[label]]) for p, label in folder.samples]
        for path, _ in samples:
            if not path.resolve().is_relative_to(base):
                raise DatasetError(f"image {path} resolves outside DATA_DIR ({base}): refused")
        files.append(samples)

    # The cache key covers every file's name, size and modification time, so edits invalidate it.
    key = hashlib.blake2b(digest_size=10)
    key.update(f"{root}|{spec.image_size}|{has_split}".encode())
    for samples in files:
        for path, label in samples:
            st = path.stat()
            key.update(f"|{path}|{label}|{st.st_size}|{st.st_mtime_ns}".encode())
    cache = data_dir / ".cache" / f"imagefolder-{key.hexdigest()}-v{CACHE_VERSION}.pt"
    cached = _read_cache(cache)
    if cached is None:
        decoded = [_decode_images(samples, spec.image_size) for samples in files]
        cached = (decoded[0], decoded[1]) if has_split else _split_80_20(decoded[0])
        _write_cache(cache, *cached)
    return cached[0], cached[1], len(classes)


def _decode_images(samples: list[tuple[Path, int]], size: int) -> Images:
    from PIL import Image, UnidentifiedImageError

    x = torch.empty((len(samples), 3, size, size), dtype=torch.uint8)
    for i, (path, _) in enumerate(samples):
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        except (OSError, UnidentifiedImageError) as e:
            raise DatasetError(f"cannot read image {path}: {first_line(e)}") from e
        x[i] = torch.from_numpy(np.asarray(rgb).transpose(2, 0, 1).copy())
    return Images(x, torch.tensor([label for _, label in samples], dtype=torch.int64))


@LOADERS.register("synthetic")
def _make_synthetic(spec: SyntheticDataset, _data_dir: Path) -> tuple[Images, Images, int]:
    c, h, w = spec.image_shape
    generator = torch.Generator().manual_seed(mix_seed("synthetic", spec.num_samples, c, h, w, spec.num_classes))
    # Each class has a smooth random pattern (a 4x4 grid upsampled); images are pattern plus noise.
    coarse = torch.rand((spec.num_classes, c, 4, 4), generator=generator)
    patterns = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False) * 128 + 64
    y = torch.randint(0, spec.num_classes, (spec.num_samples,), generator=generator)
    y[: spec.num_classes] = torch.arange(spec.num_classes)[: spec.num_samples]  # every class present
    x = torch.empty((spec.num_samples, c, h, w), dtype=torch.uint8)
    for start in range(0, spec.num_samples, 4096):  # in chunks: float noise for all would be 4x the images
        end = min(start + 4096, spec.num_samples)
        noise = torch.randn((end - start, c, h, w), generator=generator) * 48
        x[start:end] = (patterns[y[start:end]] + noise).clamp_(0, 255).round_().to(torch.uint8)
    n_test = max(1, spec.num_samples // 5)
    images = Images(x, y)
    return (
        images.subset(torch.arange(n_test, spec.num_samples)),
        images.subset(torch.arange(n_test)),
        spec.num_classes,
    )


def _read_cache(path: Path) -> tuple[Images, Images] | None:
    if not path.is_file():
        return None
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
        return Images(d["train_x"], d["train_y"]), Images(d["test_x"], d["test_y"])
    except Exception:  # an unreadable cache is rebuilt from the source
        return None


def _write_cache(path: Path, train: Images, test: Images) -> None:
    with contextlib.suppress(OSError):  # a read-only DATA_DIR only costs the decoding next time
        save_torch({"train_x": train.x, "train_y": train.y, "test_x": test.x, "test_y": test.y}, path, durable=True)


# --- batches on the device ------------------------------------------------------------


def steps_per_epoch(num_images: int, batch_size: int, ranks: int = 1) -> int:
    """Batches per epoch; a last batch of fewer than 2 images a rank is dropped (BatchNorm cannot train on one
    image; one process drops a last batch of a single image)."""
    steps = math.ceil(num_images / batch_size)
    return steps - 1 if 0 < num_images % batch_size < 2 * ranks and steps > 1 else steps


def epoch_batches(
    data: Images, batch_size: int, seed: int, epoch: int, start: int = 0, ranks: int = 1
) -> Iterator[tuple[Tensor, Tensor]]:
    """The epoch's shuffled batches (uint8 images, labels), from batch ``start`` on; the same on every rank."""
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(mix_seed(seed, epoch)))
    order = order.to(data.x.device)
    for i in range(start, steps_per_epoch(len(data), batch_size, ranks)):
        index = order[i * batch_size : (i + 1) * batch_size]
        yield data.x[index], data.y[index]


def step_generator(seed: int, epoch: int, step: int, device: torch.device) -> torch.Generator:
    """The generator of one step's augmentation and noise draws, living on ``device``."""
    return torch.Generator(device=device).manual_seed(mix_seed(seed, epoch, step))


def normalize(x: Tensor) -> Tensor:
    """uint8 images to float in [-1, 1]: (x / 255 - 0.5) / 0.5."""
    return (x.float() / 255.0 - 0.5) / 0.5


def flip_crop(x: Tensor, generator: torch.Generator) -> Tensor:
    """Random horizontal flip and random translation (reflect-pad, crop) of each image in a batch.

    The shift is up to 4 pixels at 32x32 (an eighth of the side, at least 1).
    """
    n, _, h, w = x.shape
    flip = torch.rand((n, 1, 1, 1), generator=generator, device=x.device) < 0.5
    x = torch.where(flip, x.flip(3), x)
    pad = max(1, min(4, min(h, w) // 8))
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    shift = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator, device=x.device)
    rows = (torch.arange(h, device=x.device) + shift[:, :1]).view(n, 1, h, 1)
    cols = (torch.arange(w, device=x.device) + shift[:, 1:]).view(n, 1, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    channel = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
    return padded[batch, channel, rows, cols]
