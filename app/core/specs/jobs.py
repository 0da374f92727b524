"""Job specs: the training settings shared by every kind, the two kinds of job, and presets.

A job spec is the contract between the API (which validates and stores it) and the worker (which
trains from it). Every field is validated here, so a job that reaches a worker is one the training
code can run; what can only be checked against the world (does the base job exist, is a dataset
path inside ``DATA_DIR``) is checked by app/core/jobs.py at submit.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, TypeAdapter, ValidationInfo, field_validator, model_validator

from app.core.specs.base import Strict, Text, literal_names
from app.core.specs.datasets import AnyDataset, DatasetSpec
from app.core.specs.networks import (
    ConvAutoencoderModel,
    DcganModel,
    Encoder,
    FinetuneModel,
    PretrainModel,
    SeedMlpAutoencoderModel,
    check_dcgan_shape,
)
from app.core.specs.presets import apply_preset
from app.core.specs.resources import Resources
from app.core.states import RETRY_ON_DEFAULT, ErrorClass, JobKind

GAN_LR = 2e-4
"""A DCGAN's default learning rate (Radford et al.)."""
GAN_METRICS = ("d_loss", "g_loss", "d_real", "d_fake")
"""What a DCGAN reports at log steps (and each epoch's mean): its two losses, and the discriminator's mean
output on real and on generated images."""


class EarlyStopping(Strict):
    """Stop at the end of the epoch where this rule fires; the job succeeds with ``result.stopped_early``."""

    metric: str = Field(
        "val_loss", min_length=1, max_length=100, description="An epoch metric of the job (val_* needs val_fraction)."
    )
    mode: Literal["min", "max"] | None = Field(
        None, description="Whether lower or higher is better; default: max for accuracy-like metrics, min otherwise."
    )
    patience: int = Field(5, ge=1, le=10_000, description="Epochs without an improvement of min_delta before it stops.")
    min_delta: float = Field(
        0.0, ge=0.0, allow_inf_nan=False, description="An improvement counts when it is larger than this."
    )
    target: float | None = Field(
        None, allow_inf_nan=False, description="Stop as soon as the metric is this good (at or past it)."
    )

    @property
    def higher_is_better(self) -> bool:
        if self.mode is not None:
            return self.mode == "max"
        return "acc" in self.metric or self.metric.endswith(("_score", "_f1", "samples_per_second"))


class Phase(Strict):
    """A part of a finetune run with its own epochs, learning rate and frozen backbone (a linear probe,
    then a full finetune); optimizer and schedule default to the job's ``train``."""

    epochs: int = Field(ge=1, le=10_000)
    freeze_backbone: bool = Field(False, description="Train the head alone (the backbone stays as it is).")
    lr: float = Field(gt=0.0, le=10.0)
    optimizer: Literal["adam", "adamw", "sgd"] | None = None
    schedule: Literal["constant", "cosine", "onecycle"] | None = None


class TrainSpec(Strict):
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
    checkpoint_min_seconds: float = Field(
        30.0,
        ge=0,
        le=86_400,
        description="No `last` checkpoint within this long of the previous one (but after the final epoch, an early "
        "stop or a stop request); a new best is held until the next. 0: every checkpoint_every_epochs epochs.",
    )
    early_stopping: EarlyStopping | None = Field(
        None, description="Stop before `epochs` when a metric stops improving."
    )
    phases: list[Phase] | None = Field(
        None,
        min_length=1,
        max_length=20,
        description="Finetune only: parts run in order in one job; epochs is their sum. Each starts a fresh optimizer.",
    )

    @model_validator(mode="before")
    @classmethod
    def _epochs_of_the_phases(cls, data: Any) -> Any:
        phases = data.get("phases") if isinstance(data, dict) else None
        if isinstance(phases, list) and "epochs" not in data:
            counts = [p.get("epochs") for p in phases if isinstance(p, dict)]
            whole = [c for c in counts if isinstance(c, int) and not isinstance(c, bool)]
            if whole and len(whole) == len(phases):
                data = {**data, "epochs": min(sum(whole), 10_000)}
        return data

    @model_validator(mode="after")
    def _phases_fit(self) -> TrainSpec:
        if not self.phases:
            return self
        total = sum(p.epochs for p in self.phases)
        if total != self.epochs:
            raise ValueError(f"train.epochs is {self.epochs} but the phases add up to {total}: leave epochs out")
        if self.warmup_epochs:
            raise ValueError("train.warmup_epochs does not go with phases: give each phase its schedule")
        for i, phase in enumerate(self.phases, 1):
            if (phase.optimizer or self.optimizer) != "sgd" and (self.momentum or self.nesterov):
                raise ValueError(f"train.phases[{i}]: momentum and nesterov are options of optimizer 'sgd' only")
        return self

    def phase_settings(self, phase: Phase) -> TrainSpec:
        """This job's settings for ``phase``: its epochs, lr, optimizer and schedule, no warmup."""
        optimizer = phase.optimizer or self.optimizer
        sgd = optimizer == "sgd"
        return self.model_copy(
            update={
                "epochs": phase.epochs,
                "lr": phase.lr,
                "optimizer": optimizer,
                "schedule": phase.schedule or self.schedule,
                "momentum": self.momentum if sgd else None,
                "nesterov": self.nesterov if sgd else False,
                "warmup_epochs": 0,
                "phases": None,
            }
        )

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


class _JobBase(Strict):
    name: Text | None = Field(None, max_length=200, description="A label for people; not unique.")
    priority: int = Field(0, ge=-1000, le=1000, description="Higher runs first; ties go to the oldest job.")
    max_attempts: int = Field(
        3, ge=1, le=20, description="Attempts at most: a failure of a class in retry_on is retried until then."
    )
    retry_on: list[ErrorClass] = Field(
        default_factory=lambda: list(RETRY_ON_DEFAULT),
        max_length=4,
        description="Failure classes worth another attempt: infra (the worker vanished; the default), crash, oom, user.",
    )

    @field_validator("retry_on")
    @classmethod
    def _each_once(cls, value: list[ErrorClass]) -> list[ErrorClass]:
        return list(dict.fromkeys(value))

    preset: Literal["seed"] | None = Field(None, description="'seed' fills in the article's hyperparameters.")
    train: TrainSpec = Field(default_factory=TrainSpec)
    dataset: DatasetSpec
    resources: Resources = Field(
        default_factory=Resources,
        description="GPUs (or CPU processes) on each node, and nodes; more than one rank trains data-parallel.",
    )

    @model_validator(mode="after")
    def _batch_divides_among_ranks(self) -> Any:
        ranks = self.resources.world_size
        if self.train.batch_size % ranks:
            raise ValueError(
                f"train.batch_size ({self.train.batch_size}) must divide evenly among the job's {ranks} ranks "
                f"(resources): each rank trains on batch_size / {ranks} images of every batch"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _fill_from_preset(cls, data: Any) -> Any:
        return apply_preset(data)

    @property
    def base_job_id(self) -> int | None:
        """The job this one starts from and waits for (a finetune's pretrain job), if any."""
        return None

    def encoder(self) -> Encoder:
        """The encoder this job trains (pretrain) or starts from (finetune)."""
        raise NotImplementedError


def check_early_stopping(spec: _JobBase, train_metrics: tuple[str, ...], eval_metrics: tuple[str, ...]) -> None:
    """The early-stopping metric is one the job reports at the end of each epoch."""
    rule = spec.train.early_stopping
    if rule is None:
        return
    splits = ["test", *(["val"] if spec.dataset.val_fraction > 0 else [])]
    known = [*train_metrics, *(f"{s}_{m}" for s in splits for m in eval_metrics), *EPOCH_EXTRAS]
    if rule.metric not in known:
        hint = "; val_* needs dataset.val_fraction > 0" if rule.metric.startswith("val_") else ""
        raise ValueError(
            f"train.early_stopping.metric: '{rule.metric}' is not a metric of this job; "
            f"pick one of {', '.join(known)}{hint}"
        )


EPOCH_EXTRAS = ("lr", "epoch_seconds", "samples_per_second")
"""Reported at the end of every epoch of every kind, besides the kind's training and evaluation metrics."""


class PretrainSpec(_JobBase):
    """Train an autoencoder on unlabelled images."""

    kind: Literal[JobKind.PRETRAIN]
    model: PretrainModel

    @field_validator("model")
    @classmethod
    def _fits_the_images(cls, model: Any, info: ValidationInfo) -> Any:
        dataset: AnyDataset | None = info.data.get("dataset")
        if dataset is None:
            return model  # the dataset's own error is reported
        shape = dataset.input_shape()
        if isinstance(model, SeedMlpAutoencoderModel) and shape != (3, 32, 32):
            raise ValueError("seed_mlp_autoencoder takes 3x32x32 images (cifar10/cifar100 or synthetic [3, 32, 32])")
        if isinstance(model, ConvAutoencoderModel) and min(shape[1:]) < 8:
            raise ValueError("conv_autoencoder needs images of at least 8x8")
        if isinstance(model, DcganModel):
            check_dcgan_shape(shape, "dcgan")
        return model

    def encoder(self) -> Encoder:
        return self.model.encoder(self.dataset.input_shape())

    @model_validator(mode="before")
    @classmethod
    def _gan_defaults(cls, data: Any) -> Any:
        """A DCGAN trains at Adam 2e-4 unless told otherwise (Radford et al.; betas are fixed at (0.5, 0.999))."""
        if isinstance(data, dict) and isinstance(data.get("model"), dict) and data["model"].get("arch") == "dcgan":
            train: Any = data.get("train", {})
            if isinstance(train, dict) and "lr" not in train:
                data = {**data, "train": {**train, "lr": GAN_LR}}
        return data

    @model_validator(mode="after")
    def _early_stopping_metric(self) -> PretrainSpec:
        if isinstance(self.model, DcganModel):
            if self.train.optimizer != "adam":
                raise ValueError("a dcgan trains both its networks with adam; leave train.optimizer out")
            if self.train.compile:
                raise ValueError("train.compile is not supported for a dcgan yet; leave it false")
            if self.resources.world_size > 1:
                raise ValueError("a dcgan trains on one device for now; leave resources out")
            check_early_stopping(self, GAN_METRICS, ("d_loss", "d_real", "d_fake"))
        else:
            check_early_stopping(self, ("train_loss",), ("loss",))
        if self.train.phases:
            raise ValueError("train.phases are for finetune jobs (a linear probe, then a full finetune)")
        return self


class FinetuneSpec(_JobBase):
    """Train a classifier on labelled images, optionally from a pretrain job's encoder."""

    kind: Literal[JobKind.FINETUNE]
    model: FinetuneModel

    @field_validator("model")
    @classmethod
    def _classes(cls, model: FinetuneModel, info: ValidationInfo) -> FinetuneModel:
        dataset: AnyDataset | None = info.data.get("dataset")
        if dataset is None:
            return model
        known = dataset.class_count()
        if model.num_classes is None:
            if known is None:
                raise ValueError("num_classes is required for an imagefolder dataset")
            model.num_classes = known
        elif known is not None and model.num_classes < known:
            raise ValueError(f"num_classes is {model.num_classes} but dataset '{dataset.name}' has {known} classes")
        if model.arch == "dcgan_discriminator":
            check_dcgan_shape(dataset.input_shape(), "dcgan_discriminator")
        return model

    @property
    def base_job_id(self) -> int | None:
        return self.model.init.job_id if self.model.init.from_ == "job" else None

    def encoder(self) -> Encoder:
        return self.model.encoder(self.dataset.input_shape())

    @model_validator(mode="after")
    def _early_stopping_metric(self) -> FinetuneSpec:
        check_early_stopping(self, ("train_loss", "train_accuracy"), ("loss", "accuracy"))
        if self.train.phases and self.model.freeze_backbone:
            raise ValueError(
                "model.freeze_backbone does not go with train.phases: say freeze_backbone in each phase instead"
            )
        return self


AnyJobSpec = PretrainSpec | FinetuneSpec
JOB_KINDS = literal_names(AnyJobSpec, "kind")


def _kind_of(body: Any) -> str | None:
    kind = body.get("kind") if isinstance(body, dict) else getattr(body, "kind", None)
    return str(kind) if isinstance(kind, str) else None


JobSpec = Annotated[
    Annotated[PretrainSpec, Tag(JobKind.PRETRAIN.value)] | Annotated[FinetuneSpec, Tag(JobKind.FINETUNE.value)],
    Discriminator(
        _kind_of,
        custom_error_type="kind_invalid",
        custom_error_message=f"kind must be one of: {', '.join(JOB_KINDS)}",
    ),
]
job_spec_adapter: TypeAdapter[AnyJobSpec] = TypeAdapter(JobSpec)


def parse_job_spec(body: Any) -> PretrainSpec | FinetuneSpec:
    """Validate a raw job body (presets applied); raises pydantic.ValidationError."""
    return job_spec_adapter.validate_python(body)


QUIET_DEFAULTS = {
    ("dataset", "image_size"): 8,
    ("model", "width"): None,
    ("train", "checkpoint_min_seconds"): 30.0,
}
"""Fields added after specs were first stored, left out at their defaults (and ``resources``, at one device): a spec stored before them is
stored the same way still (its idempotency hash unchanged), and a worker from before them still reads it."""


def spec_to_json(spec: PretrainSpec | FinetuneSpec) -> dict[str, Any]:
    """The spec as stored and shown: every default filled in (but ``QUIET_DEFAULTS``), ``from`` under its
    JSON name."""
    body = spec.model_dump(mode="json", by_alias=True)
    if spec.resources.is_default:
        del body["resources"]
    for (part, field), default in QUIET_DEFAULTS.items():
        if field in body[part] and body[part][field] == default:
            del body[part][field]
    return body
