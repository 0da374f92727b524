"""Network specs of both kinds of job, and the encoder each one has (what must match pretrain -> finetune).

The builders live in worker/training/nets.py, registered under the same ``arch`` names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from app.core.specs.base import Shape, Strict, literal_names

MLP_HIDDEN = (1024, 512)
"""Default hidden widths of an MLP encoder (the decoder mirrors them)."""
MLP_BOTTLENECK = 256
"""Default feature width of an MLP encoder."""

# The seed autoencoder's encoder, as an MLP backbone: hidden widths then bottleneck (the article's).
SEED_MLP_HIDDEN = (4 * 4 * 4 * 64, 4 * 4 * 4 * 128, 4 * 4 * 4 * 256, 4 * 4 * 4 * 128, 4 * 4 * 4 * 64)
SEED_MLP_BOTTLENECK = 3 * 32 * 32

Backbone = Literal["small_cnn", "resnet18"]
Widths = list[Annotated[int, Field(ge=1, le=65536)]]


@dataclass(frozen=True)
class Encoder:
    """What a pretrain job's encoder is, and a finetune's backbone must be, for one to load into the other."""

    arch: str
    inputs: Shape | int
    """The image shape for an MLP (it flattens it); the channel count for a conv net."""
    hidden: tuple[int, ...] = ()
    bottleneck: int | None = None
    small_input: bool = False

    @classmethod
    def mlp(cls, shape: Shape, hidden: tuple[int, ...] | list[int], bottleneck: int) -> Encoder:
        return cls("mlp", shape, tuple(hidden), bottleneck)

    @classmethod
    def conv(cls, arch: str, shape: Shape, small_input: bool) -> Encoder:
        return cls(arch, shape[0], small_input=small_input and arch == "resnet18")

    @classmethod
    def dcgan(cls, shape: Shape, width: int) -> Encoder:
        return cls("dcgan_discriminator", shape, bottleneck=width)

    def describe(self) -> str:
        """A person's reading, for error messages."""
        if self.arch == "dcgan_discriminator":
            assert isinstance(self.inputs, tuple)
            return f"dcgan_discriminator of width {self.bottleneck} on {'x'.join(map(str, self.inputs))} images"
        if self.arch == "mlp":
            assert isinstance(self.inputs, tuple)
            size = "x".join(map(str, self.inputs))
            return f"mlp on {size} inputs with hidden {list(self.hidden)} and bottleneck {self.bottleneck}"
        return f"{self.arch} on {self.inputs}-channel inputs" + (" (small_input)" if self.small_input else "")


# --- pretrain ---------------------------------------------------------------------


class MlpAutoencoderModel(Strict):
    """MLP autoencoder; the decoder mirrors the encoder."""

    arch: Literal["mlp_autoencoder"]
    hidden: Widths = Field(default_factory=lambda: list(MLP_HIDDEN), max_length=8)
    bottleneck: int = Field(MLP_BOTTLENECK, ge=1, le=65536)
    noise: float = Field(0.0, ge=0.0, le=1.0, description="Denoising: std of Gaussian noise added to inputs.")

    def encoder(self, shape: Shape) -> Encoder:
        return Encoder.mlp(shape, self.hidden, self.bottleneck)


class SeedMlpAutoencoderModel(Strict):
    """The article's MLP autoencoder, exact widths, with the missing flatten added (~720M parameters)."""

    arch: Literal["seed_mlp_autoencoder"]
    noise: float = Field(0.0, ge=0.0, le=1.0)

    def encoder(self, shape: Shape) -> Encoder:
        return Encoder.mlp(shape, SEED_MLP_HIDDEN, SEED_MLP_BOTTLENECK)


class ConvAutoencoderModel(Strict):
    """Convolutional autoencoder whose encoder is exactly the finetune backbone of the same name."""

    arch: Literal["conv_autoencoder"]
    backbone: Backbone = "small_cnn"
    small_input: bool = Field(True, description="resnet18 only: 3x3 stride-1 stem, no max-pool (32x32 images).")
    noise: float = Field(0.0, ge=0.0, le=1.0)

    def encoder(self, shape: Shape) -> Encoder:
        return Encoder.conv(self.backbone, shape, self.small_input)


DCGAN_SIZES = (32, 64)
"""The square image sizes a DCGAN is built for (one upsampling stage fewer at 32)."""
DCGAN_WIDTH = 64


def check_dcgan_shape(shape: Shape, arch: str) -> None:
    if shape[1] != shape[2] or shape[1] not in DCGAN_SIZES:
        size = "x".join(map(str, shape[1:]))
        raise ValueError(
            f"{arch} takes square 32x32 or 64x64 images, not {size} "
            "(digits: set dataset.image_size to 32; an image folder: image_size 32 or 64)"
        )


def dcgan_multipliers(size: int) -> list[int]:
    """Channels of each of a DCGAN discriminator's strided layers, in units of ``width``: 32x32 images
    halve to 4x4 in three layers (1, 2, 4), 64x64 in four (1, 2, 4, 8); the generator mirrors them."""
    return [2**i for i in range(int(math.log2(size)) - 2)]


class DcganModel(Strict):
    """A DCGAN (Radford et al.): its discriminator, without its last layer, is the encoder a finetune
    (arch ``dcgan_discriminator``) starts from."""

    arch: Literal["dcgan"]
    latent_dim: int = Field(100, ge=1, le=1024, description="Length of the generator's noise vector.")
    width: int = Field(DCGAN_WIDTH, ge=4, le=512, description="Channels of the first (and last) conv layer.")

    def encoder(self, shape: Shape) -> Encoder:
        return Encoder.dcgan(shape, self.width)


AnyPretrainModel = MlpAutoencoderModel | SeedMlpAutoencoderModel | ConvAutoencoderModel | DcganModel
PretrainModel = Annotated[AnyPretrainModel, Field(discriminator="arch")]
PRETRAIN_ARCHS = literal_names(AnyPretrainModel, "arch")


# --- finetune ---------------------------------------------------------------------


class InitSpec(Strict):
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


class FinetuneModel(Strict):
    """A backbone plus a new linear head of ``num_classes``."""

    arch: Literal["mlp", "small_cnn", "resnet18", "dcgan_discriminator"]
    num_classes: int | None = Field(None, ge=2, le=100_000, description="Defaults to the dataset's class count.")
    init: InitSpec = Field(default_factory=InitSpec)
    freeze_backbone: bool = Field(False, description="Train the head only (linear probe).")
    hidden: Widths | None = Field(
        None, max_length=8, description=f"mlp only: hidden widths (default {list(MLP_HIDDEN)})."
    )
    bottleneck: int | None = Field(
        None, ge=1, le=65536, description=f"mlp only: feature width (default {MLP_BOTTLENECK})."
    )
    small_input: bool = Field(False, description="resnet18 only: 3x3 stride-1 stem and no max-pool.")
    width: int | None = Field(
        None, ge=4, le=512, description=f"dcgan_discriminator only: its first layer's channels (default {DCGAN_WIDTH})."
    )

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

    @field_validator("width")
    @classmethod
    def _dcgan_only(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and info.data.get("arch") not in (None, "dcgan_discriminator"):
            raise ValueError("width is an option of arch 'dcgan_discriminator' only")
        return value

    @field_validator("small_input")
    @classmethod
    def _resnet18_only(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("arch") not in (None, "resnet18"):
            raise ValueError("small_input is an option of arch 'resnet18' only")
        return value

    @property
    def mlp_hidden(self) -> list[int]:
        return list(self.hidden) if self.hidden is not None else list(MLP_HIDDEN)

    @property
    def mlp_bottleneck(self) -> int:
        return self.bottleneck if self.bottleneck is not None else MLP_BOTTLENECK

    @property
    def dcgan_width(self) -> int:
        return self.width if self.width is not None else DCGAN_WIDTH

    def encoder(self, shape: Shape) -> Encoder:
        if self.arch == "mlp":
            return Encoder.mlp(shape, self.mlp_hidden, self.mlp_bottleneck)
        if self.arch == "dcgan_discriminator":
            return Encoder.dcgan(shape, self.dcgan_width)
        return Encoder.conv(self.arch, shape, self.small_input)


FINETUNE_ARCHS = literal_names(FinetuneModel, "arch")
