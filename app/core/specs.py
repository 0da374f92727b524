"""Job specifications: what a pretrain or finetune job asks for.

These pydantic models are the contract shared by the API (which validates and
stores them) and the worker (which trains from them). They carry no torch
imports. Every field is validated here, so a job that reaches a worker is one
the training code can run; what can only be checked against the world (does
the base job exist, is a dataset path inside ``DATA_DIR``) is checked by the
service with the helpers at the end of this module.
"""

from __future__ import annotations

import copy
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationInfo,
    field_validator,
    model_validator,
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


Text = Annotated[str, AfterValidator(_no_nul)]


# --- datasets -----------------------------------------------------------------


class _DatasetOptions(_Strict):
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


class DigitsDataset(_DatasetOptions):
    """scikit-learn's bundled 8x8 digits: 1,797 images, 10 classes, no download."""

    name: Literal["digits"]


class TorchvisionDataset(_DatasetOptions):
    """A torchvision dataset read from ``DATA_DIR/<name>``."""

    name: Literal["cifar10", "cifar100", "mnist", "fashion_mnist"]
    download: bool = Field(False, description="Let torchvision fetch the files where the machine has internet.")


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


DatasetSpec = Annotated[
    DigitsDataset | TorchvisionDataset | ImageFolderDataset | SyntheticDataset,
    Field(discriminator="name"),
]

_FIXED_SHAPES: dict[str, tuple[int, int, int]] = {
    "digits": (1, 8, 8),
    "cifar10": (3, 32, 32),
    "cifar100": (3, 32, 32),
    "mnist": (1, 28, 28),
    "fashion_mnist": (1, 28, 28),
}
_FIXED_CLASSES: dict[str, int] = {
    "digits": 10,
    "cifar10": 10,
    "cifar100": 100,
    "mnist": 10,
    "fashion_mnist": 10,
}


def dataset_input_shape(
    dataset: DigitsDataset | TorchvisionDataset | ImageFolderDataset | SyntheticDataset,
) -> tuple[int, int, int]:
    """(channels, height, width) of the images the dataset yields."""
    if isinstance(dataset, SyntheticDataset):
        c, h, w = dataset.image_shape
        return (c, h, w)
    if isinstance(dataset, ImageFolderDataset):
        return (3, dataset.image_size, dataset.image_size)
    return _FIXED_SHAPES[dataset.name]


def dataset_num_classes(
    dataset: DigitsDataset | TorchvisionDataset | ImageFolderDataset | SyntheticDataset,
) -> int | None:
    """Number of classes when the spec alone tells (None for an image folder)."""
    if isinstance(dataset, SyntheticDataset):
        return dataset.num_classes
    return _FIXED_CLASSES.get(dataset.name)


# --- models -------------------------------------------------------------------

Backbone = Literal["small_cnn", "resnet18"]


class MlpAutoencoderModel(_Strict):
    """MLP autoencoder; the decoder mirrors the encoder."""

    arch: Literal["mlp_autoencoder"]
    hidden: list[Annotated[int, Field(ge=1, le=65536)]] = Field(default_factory=lambda: [1024, 512], max_length=8)
    bottleneck: int = Field(256, ge=1, le=65536)
    noise: float = Field(0.0, ge=0.0, le=1.0, description="Denoising: std of Gaussian noise added to inputs.")


class SeedMlpAutoencoderModel(_Strict):
    """The article's MLP autoencoder, exact widths, with the missing flatten added (~720M parameters)."""

    arch: Literal["seed_mlp_autoencoder"]
    noise: float = Field(0.0, ge=0.0, le=1.0)


class ConvAutoencoderModel(_Strict):
    """Convolutional autoencoder whose encoder is exactly the finetune backbone of the same name."""

    arch: Literal["conv_autoencoder"]
    backbone: Backbone = "small_cnn"
    small_input: bool = Field(True, description="resnet18 only: 3x3 stride-1 stem, no max-pool (32x32 images).")
    noise: float = Field(0.0, ge=0.0, le=1.0)


PretrainModel = Annotated[
    MlpAutoencoderModel | SeedMlpAutoencoderModel | ConvAutoencoderModel,
    Field(discriminator="arch"),
]

# The seed autoencoder's encoder, as an MLP backbone: hidden widths then bottleneck.
SEED_MLP_HIDDEN = [4 * 4 * 4 * 64, 4 * 4 * 4 * 128, 4 * 4 * 4 * 256, 4 * 4 * 4 * 128, 4 * 4 * 4 * 64]
SEED_MLP_BOTTLENECK = 3 * 32 * 32


class InitSpec(_Strict):
    """Where a finetune's backbone weights come from."""

    from_: Literal["scratch", "imagenet", "job"] = Field("scratch", alias="from")
    job_id: int | None = Field(
        None, ge=1, le=2**31 - 1, validate_default=True, description="The pretrain job to start from (from=job)."
    )

    @field_validator("job_id")
    @classmethod
    def _job_id_iff_job(cls, value: int | None, info: ValidationInfo) -> int | None:
        source = info.data.get("from_")
        if source == "job" and value is None:
            raise ValueError("from=job needs job_id: the id of a pretrain job")
        if source is not None and source != "job" and value is not None:
            raise ValueError("job_id is only allowed with from=job")
        return value


class FinetuneModel(_Strict):
    """A backbone plus a new linear head of ``num_classes``."""

    arch: Literal["mlp", "small_cnn", "resnet18"]
    num_classes: int | None = Field(None, ge=2, le=100_000, description="Defaults to the dataset's class count.")
    init: InitSpec = Field(default_factory=InitSpec)
    freeze_backbone: bool = Field(False, description="Train the head only (linear probe).")
    hidden: list[Annotated[int, Field(ge=1, le=65536)]] | None = Field(
        None, max_length=8, description="mlp only: hidden widths (default [1024, 512])."
    )
    bottleneck: int | None = Field(None, ge=1, le=65536, description="mlp only: feature width (default 256).")
    small_input: bool = Field(False, description="resnet18 only: 3x3 stride-1 stem and no max-pool.")

    @field_validator("init")
    @classmethod
    def _imagenet_is_resnet18(cls, value: InitSpec, info: ValidationInfo) -> InitSpec:
        if value.from_ == "imagenet" and info.data.get("arch") not in (None, "resnet18"):
            raise ValueError("init from 'imagenet' is available for arch 'resnet18' only")
        return value

    @field_validator("hidden", "bottleneck")
    @classmethod
    def _mlp_only(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and info.data.get("arch") not in (None, "mlp"):
            raise ValueError(f"{info.field_name} is an option of arch 'mlp' only")
        return value

    @field_validator("small_input")
    @classmethod
    def _resnet18_only(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("arch") not in (None, "resnet18"):
            raise ValueError("small_input is an option of arch 'resnet18' only")
        return value

    @property
    def mlp_hidden(self) -> list[int]:
        return list(self.hidden) if self.hidden is not None else [1024, 512]

    @property
    def mlp_bottleneck(self) -> int:
        return self.bottleneck if self.bottleneck is not None else 256


# --- training -----------------------------------------------------------------


class TrainSpec(_Strict):
    """Optimisation settings shared by both kinds of job."""

    epochs: int = Field(10, ge=1, le=10_000)
    batch_size: int = Field(100, ge=1, le=65_536)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0.0, le=10.0)
    momentum: float | None = Field(None, ge=0.0, lt=1.0, description="sgd only (default 0).")
    nesterov: bool = Field(False, description="sgd only; needs momentum > 0.")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)
    schedule: Literal["constant", "cosine", "onecycle"] = "constant"
    warmup_epochs: int = Field(0, ge=0, le=10_000)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    precision: Literal["auto", "fp32"] = Field("auto", description="auto: bf16 autocast on CUDA, fp32 elsewhere.")
    channels_last: bool = Field(
        True, description="channels_last memory format for conv nets on CUDA and CPU (faster convolutions)."
    )
    compile: bool = Field(False, description="torch.compile the model (opt-in: compile time).")
    log_every_steps: int = Field(50, ge=1, le=1_000_000)
    checkpoint_every_epochs: int = Field(1, ge=1, le=10_000)

    @field_validator("momentum")
    @classmethod
    def _momentum_is_sgd(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is not None and info.data.get("optimizer", "sgd") != "sgd":
            raise ValueError("momentum is an option of optimizer 'sgd' only")
        return value

    @field_validator("nesterov")
    @classmethod
    def _nesterov_needs_momentum(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("optimizer", "sgd") != "sgd":
            raise ValueError("nesterov is an option of optimizer 'sgd' only")
        if value and "momentum" in info.data and not info.data["momentum"]:
            raise ValueError("nesterov needs momentum > 0")
        return value

    @field_validator("warmup_epochs")
    @classmethod
    def _warmup_within_epochs(cls, value: int, info: ValidationInfo) -> int:
        epochs = info.data.get("epochs")
        if value > 0 and epochs is not None and value >= epochs:
            raise ValueError(f"warmup_epochs must be smaller than epochs ({epochs})")
        return value


# --- jobs ---------------------------------------------------------------------


class _JobBase(_Strict):
    name: Text | None = Field(None, max_length=200, description="A label for people; not unique.")
    priority: int = Field(0, ge=-1000, le=1000, description="Higher runs first; ties go to the oldest job.")
    max_attempts: int = Field(3, ge=1, le=20, description="Runs allowed before a job lost by its worker is failed.")
    preset: Literal["seed"] | None = Field(None, description="'seed' fills in the article's hyperparameters.")
    train: TrainSpec = Field(default_factory=TrainSpec)

    @model_validator(mode="before")
    @classmethod
    def _fill_from_preset(cls, data: Any) -> Any:
        return apply_preset(data)


class PretrainSpec(_JobBase):
    """Train an autoencoder on unlabelled images."""

    kind: Literal["pretrain"]
    dataset: DatasetSpec
    model: PretrainModel

    @field_validator("model")
    @classmethod
    def _fits_the_images(cls, model: Any, info: ValidationInfo) -> Any:
        dataset = info.data.get("dataset")
        if dataset is None:
            return model  # the dataset's own error is reported
        shape = dataset_input_shape(dataset)
        if isinstance(model, SeedMlpAutoencoderModel) and shape != (3, 32, 32):
            raise ValueError("seed_mlp_autoencoder takes 3x32x32 images (cifar10/cifar100 or synthetic [3, 32, 32])")
        if isinstance(model, ConvAutoencoderModel) and min(shape[1:]) < 8:
            raise ValueError("conv_autoencoder needs images of at least 8x8")
        return model


class FinetuneSpec(_JobBase):
    """Train a classifier on labelled images, optionally from a pretrain job's encoder."""

    kind: Literal["finetune"]
    dataset: DatasetSpec
    model: FinetuneModel

    @field_validator("model")
    @classmethod
    def _classes(cls, model: FinetuneModel, info: ValidationInfo) -> FinetuneModel:
        dataset = info.data.get("dataset")
        if dataset is None:
            return model
        known = dataset_num_classes(dataset)
        if model.num_classes is None:
            if known is None:
                raise ValueError("num_classes is required for an imagefolder dataset")
            model.num_classes = known
        elif known is not None and model.num_classes < known:
            raise ValueError(f"num_classes is {model.num_classes} but dataset '{dataset.name}' has {known} classes")
        return model

    @property
    def base_job_id(self) -> int | None:
        return self.model.init.job_id if self.model.init.from_ == "job" else None


JobSpec = Annotated[PretrainSpec | FinetuneSpec, Field(discriminator="kind")]
job_spec_adapter: TypeAdapter[PretrainSpec | FinetuneSpec] = TypeAdapter(JobSpec)

# The article's hyperparameters (section 4); user fields override them.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "seed": {
        "pretrain": {
            "dataset": {"name": "cifar10"},
            "model": {"arch": "seed_mlp_autoencoder"},
            "train": {"epochs": 10, "batch_size": 100, "optimizer": "adam", "lr": 1e-3},
        },
        "finetune": {
            "dataset": {"name": "cifar10"},
            "model": {"arch": "resnet18", "num_classes": 10, "init": {"from": "imagenet"}},
            "train": {"epochs": 10, "batch_size": 100, "optimizer": "sgd", "lr": 1e-3, "momentum": 0.9},
        },
    }
}


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            # A different dataset or arch starts from that one's defaults, not the preset's options.
            discriminator = {"dataset": "name", "model": "arch"}.get(key)
            if discriminator and value.get(discriminator, out[key].get(discriminator)) != out[key].get(discriminator):
                out[key] = copy.deepcopy(value)
            else:
                out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def apply_preset(body: Any) -> Any:
    """Fill a raw job body from its preset; fields the user gave win."""
    if not isinstance(body, dict) or body.get("preset") is None:
        return body
    preset, kind = body["preset"], body.get("kind")
    if not isinstance(preset, str) or preset not in PRESETS or kind not in ("pretrain", "finetune"):
        return body  # validation reports the bad value
    base = PRESETS[preset][kind]
    train = body.get("train")
    if isinstance(train, dict) and train.get("optimizer", "sgd") != "sgd":
        # Choosing another optimizer drops the preset's sgd-only options the user did not give.
        base = copy.deepcopy(base)
        for option in ("momentum", "nesterov"):
            base["train"].pop(option, None)
    return _merge(base, body)


def parse_job_spec(body: Any) -> PretrainSpec | FinetuneSpec:
    """Validate a raw job body (presets applied); raises pydantic.ValidationError."""
    return job_spec_adapter.validate_python(body)


def encoder_signature(spec: PretrainSpec | FinetuneSpec) -> tuple[Any, ...]:
    """What must match for a pretrain job's encoder to load into a finetune backbone."""
    shape = dataset_input_shape(spec.dataset)
    model = spec.model
    if isinstance(model, MlpAutoencoderModel):
        return ("mlp", shape, tuple(model.hidden), model.bottleneck)
    if isinstance(model, SeedMlpAutoencoderModel):
        return ("mlp", shape, tuple(SEED_MLP_HIDDEN), SEED_MLP_BOTTLENECK)
    if isinstance(model, ConvAutoencoderModel):
        small = model.small_input if model.backbone == "resnet18" else False
        return (model.backbone, shape[0], small)
    assert isinstance(model, FinetuneModel)
    if model.arch == "mlp":
        return ("mlp", shape, tuple(model.mlp_hidden), model.mlp_bottleneck)
    return (model.arch, shape[0], model.small_input)


def describe_encoder(signature: tuple[Any, ...]) -> str:
    """A person's reading of an encoder signature, for error messages."""
    if signature[0] == "mlp":
        _, shape, hidden, bottleneck = signature
        return f"mlp on {'x'.join(map(str, shape))} inputs with hidden {list(hidden)} and bottleneck {bottleneck}"
    arch, channels, small = signature
    return f"{arch} on {channels}-channel inputs" + (" (small_input)" if small else "")
