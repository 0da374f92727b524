"""Dataset specs, and each dataset's facts (image shape, class count, where its files go), stated once.

The worker's loaders (worker/training/data.py) are registered under the same names and read the
facts from here; tests/worker/training/test_registries.py checks that every name has a loader.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator

from app.core.specs.base import Shape, Strict, Text, literal_names


class _DatasetOptions(Strict):
    labels_per_class: int | None = Field(
        None, ge=1, le=100_000, description="Keep this many labelled training images per class (stratified, seeded)."
    )
    label_fraction: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        validate_default=True,
        description="Keep this fraction of the labelled training images (stratified, seeded).",
    )
    limit: int | None = Field(None, ge=1, description="Use only the first N training images (quick runs).")
    val_fraction: float = Field(0.0, ge=0.0, le=0.9, description="Hold out this fraction of training data.")
    augment: Literal["none", "flip_crop"] = Field("none", description="Batched augmentation on the device.")

    @field_validator("label_fraction")
    @classmethod
    def _one_label_budget(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is not None and info.data.get("labels_per_class") is not None:
            raise ValueError("give labels_per_class or label_fraction, not both")
        return value

    def input_shape(self) -> Shape:
        """(channels, height, width) of the images the dataset yields."""
        raise NotImplementedError

    def class_count(self) -> int | None:
        """Number of classes, when the spec alone tells (None for an image folder)."""
        raise NotImplementedError


class DigitsDataset(_DatasetOptions):
    """scikit-learn's bundled 8x8 digits: 1,797 images, 10 classes, no download."""

    name: Literal["digits"]
    image_size: Literal[8, 16, 32, 64] = Field(
        8, description="Upscale (bilinear) to this size: 32 for a dcgan; 8 keeps the originals."
    )

    def input_shape(self) -> Shape:
        return (1, self.image_size, self.image_size)

    def class_count(self) -> int:
        return 10


@dataclass(frozen=True)
class TorchvisionSource:
    title: str
    dataset_class: str
    """The class in ``torchvision.datasets`` that reads it."""
    shape: Shape
    classes: int
    expected: str
    """What belongs in ``DATA_DIR/<name>``, for the error message when it is missing."""


IDX_FILES = "the raw IDX files ({}/raw/train-images-idx3-ubyte and the other three)"
TORCHVISION_SOURCES: dict[str, TorchvisionSource] = {
    "cifar10": TorchvisionSource(
        "CIFAR-10", "CIFAR10", (3, 32, 32), 10, "the python-version batches (cifar-10-batches-py/)"
    ),
    "cifar100": TorchvisionSource(
        "CIFAR-100", "CIFAR100", (3, 32, 32), 100, "the python-version files (cifar-100-python/)"
    ),
    "mnist": TorchvisionSource("MNIST", "MNIST", (1, 28, 28), 10, IDX_FILES.format("MNIST")),
    "fashion_mnist": TorchvisionSource(
        "Fashion-MNIST", "FashionMNIST", (1, 28, 28), 10, IDX_FILES.format("FashionMNIST")
    ),
}
"""Each torchvision dataset a job may name (the ``TorchvisionDataset.name`` literal lists the same keys)."""


class TorchvisionDataset(_DatasetOptions):
    """A torchvision dataset read from ``DATA_DIR/<name>``."""

    name: Literal["cifar10", "cifar100", "mnist", "fashion_mnist"]
    download: bool = Field(False, description="Let torchvision fetch the files where the machine has internet.")

    @property
    def source(self) -> TorchvisionSource:
        return TORCHVISION_SOURCES[self.name]

    def input_shape(self) -> Shape:
        return self.source.shape

    def class_count(self) -> int:
        return self.source.classes


class ImageFolderDataset(_DatasetOptions):
    """Class-per-folder images under ``DATA_DIR/<path>``, resized to ``image_size``."""

    name: Literal["imagefolder"]
    path: Text = Field(min_length=1, max_length=1024, description="Folder relative to DATA_DIR.")
    image_size: int = Field(32, ge=8, le=512)

    @field_validator("path")
    @classmethod
    def _relative_path(cls, value: str) -> str:
        p = PurePosixPath(value)
        if p.is_absolute() or value.startswith("~") or ".." in p.parts or "\\" in value:
            raise ValueError("path must be relative to DATA_DIR and must not contain '..'")
        return value

    def input_shape(self) -> Shape:
        return (3, self.image_size, self.image_size)

    def class_count(self) -> None:
        return None


class SyntheticDataset(_DatasetOptions):
    """Seeded random images, for smoke runs and benchmarks."""

    name: Literal["synthetic"]
    num_samples: int = Field(5000, ge=2, le=2_000_000)
    image_shape: list[int] = Field(default_factory=lambda: [3, 32, 32], min_length=3, max_length=3)
    num_classes: int = Field(10, ge=2, le=1000)

    @field_validator("image_shape")
    @classmethod
    def _shape(cls, value: list[int]) -> list[int]:
        c, h, w = value
        if not (1 <= c <= 4 and 4 <= h <= 512 and 4 <= w <= 512):
            raise ValueError("image_shape must be [channels 1-4, height 4-512, width 4-512]")
        return value

    def input_shape(self) -> Shape:
        c, h, w = self.image_shape
        return (c, h, w)

    def class_count(self) -> int:
        return self.num_classes


AnyDataset = DigitsDataset | TorchvisionDataset | ImageFolderDataset | SyntheticDataset
DatasetSpec = Annotated[AnyDataset, Field(discriminator="name")]
DATASET_NAMES = literal_names(AnyDataset, "name")
"""Every dataset name a job may ask for."""
