"""What a job will cost, from its spec alone: parameters, images held in memory, metric points, memory.

The API refuses at submit what no machine should be asked to run (``check_limits``: each setting's
limit and the estimate in the 422); a worker fails at once a job that cannot fit its device
(``Estimate.memory_bytes`` is a lower bound: weights, gradients, optimizer state and the images on
the device, nothing for activations, so a job it refuses surely does not fit). Parameter counts are
exact for every arch (tests/worker/training/test_estimates.py builds each network and counts).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from app.core.errors import InvalidRequest
from app.core.specs import (
    SEED_MLP_BOTTLENECK,
    SEED_MLP_HIDDEN,
    AnyDataset,
    AnyJobSpec,
    ConvAutoencoderModel,
    DcganModel,
    DigitsDataset,
    FinetuneSpec,
    ImageFolderDataset,
    MlpAutoencoderModel,
    Shape,
    SyntheticDataset,
    TorchvisionDataset,
)
from app.core.specs.networks import dcgan_multipliers

SPLITS = {"digits": (1437, 360), "cifar10": (50_000, 10_000), "cifar100": (50_000, 10_000)}
SPLITS |= {"mnist": (60_000, 10_000), "fashion_mnist": (60_000, 10_000)}
"""(train, test) images of each dataset of a fixed size."""
SERIES_PER_EPOCH = 12
"""Points a job reports at each epoch's end (train/test/val losses and accuracies, lr, timings)."""
RESNET18_BODY = 11_176_512 - 3 * 64 * 49
"""torchvision's resnet18 without its fc and without conv1 (whose size depends on the input)."""


@dataclass(frozen=True)
class Estimate:
    params: int
    images: tuple[int, int] | None
    """(train, test) images the dataset holds, when the spec tells (an image folder's it does not)."""
    dataset_bytes: int | None
    step_bytes: int
    """One batch as float32 input: the least a step holds."""
    metric_points: int
    """At least this many (an image folder's exact count is known only when it is loaded)."""
    memory_bytes: int
    """A lower bound of the device memory training needs."""


def _linear(fan_in: int, fan_out: int) -> int:
    return fan_in * fan_out + fan_out


def mlp_params(shape: Shape, hidden: tuple[int, ...] | list[int], bottleneck: int, decoder: bool) -> int:
    widths = [math.prod(shape), *hidden, bottleneck]
    encoder = sum(_linear(a, b) for a, b in itertools.pairwise(widths)) + 2 * sum(hidden)
    if not decoder:
        return encoder
    back = [bottleneck, *reversed(hidden), math.prod(shape)]
    return encoder + sum(_linear(a, b) for a, b in itertools.pairwise(back)) + 2 * sum(hidden)


def conv_backbone_params(arch: str, channels: int, small_input: bool) -> tuple[int, int]:
    """(parameters, feature width) of a conv backbone."""
    if arch == "small_cnn":
        widths = [channels, 32, 64, 128, 256]
        return sum(a * b * 9 + 2 * b for a, b in itertools.pairwise(widths)), 256
    stem = channels * 64 * (9 if small_input else 49)
    return RESNET18_BODY + stem, 512


def conv_decoder_params(features: int, shape: Shape) -> int:
    c, h, w = shape
    doublings = max(0, math.ceil(math.log2(max(h, w) / 4)))
    width = 256
    total = _linear(features, width * math.ceil(h / 2**doublings) * math.ceil(w / 2**doublings))
    for _ in range(doublings):
        narrower = max(32, width // 2)
        total += width * narrower * 9 + 2 * narrower
        width = narrower
    return total + width * c * 9 + c


def dcgan_params(shape: Shape, width: int, latent_dim: int | None) -> tuple[int, int]:
    """(parameters, feature width) of a DCGAN's discriminator without its last layer, and with
    ``latent_dim`` its last layer and the generator too (4x4 convolutions without bias; BatchNorm)."""
    c, size = shape[0], shape[1]
    channels = [width * m for m in dcgan_multipliers(size)]
    encoder = c * channels[0] * 16 + sum(a * b * 16 + 2 * b for a, b in itertools.pairwise(channels))
    features = channels[-1] * 16
    if latent_dim is None:
        return encoder, features
    ups = [*reversed(channels)]
    generator = latent_dim * ups[0] * 16 + 2 * ups[0]
    generator += sum(a * b * 16 + 2 * b for a, b in itertools.pairwise(ups)) + ups[-1] * c * 16
    return encoder + channels[-1] * 16 + generator, features


def params_of(spec: AnyJobSpec) -> int:
    shape, model = spec.dataset.input_shape(), spec.model
    if isinstance(spec, FinetuneSpec):
        classes = spec.model.num_classes or 0
        if spec.model.arch == "dcgan_discriminator":
            body, features = dcgan_params(shape, spec.model.dcgan_width, None)
            return body + _linear(features, classes)
        if spec.model.arch == "mlp":
            return mlp_params(shape, spec.model.mlp_hidden, spec.model.mlp_bottleneck, False) + _linear(
                spec.model.mlp_bottleneck, classes
            )
        body, features = conv_backbone_params(spec.model.arch, shape[0], spec.model.small_input)
        return body + _linear(features, classes)
    if isinstance(model, MlpAutoencoderModel):
        return mlp_params(shape, model.hidden, model.bottleneck, True)
    if isinstance(model, ConvAutoencoderModel):
        body, features = conv_backbone_params(model.backbone, shape[0], model.small_input)
        return body + conv_decoder_params(features, shape)
    if isinstance(model, DcganModel):
        return dcgan_params(shape, model.width, model.latent_dim)[0]
    return mlp_params(shape, SEED_MLP_HIDDEN, SEED_MLP_BOTTLENECK, True)


def images_of(dataset: AnyDataset) -> tuple[int, int] | None:
    if isinstance(dataset, SyntheticDataset):
        test = max(1, dataset.num_samples // 5)
        return dataset.num_samples - test, test
    if isinstance(dataset, DigitsDataset | TorchvisionDataset):
        return SPLITS[dataset.name]
    assert isinstance(dataset, ImageFolderDataset)
    return None


def least_images(spec: AnyJobSpec) -> int:
    """The fewest training images a job's dataset can hold: a finetune's image folder has one per class."""
    return (spec.model.num_classes or 1) if isinstance(spec, FinetuneSpec) else 1


def estimate(spec: AnyJobSpec) -> Estimate:
    shape, train = spec.dataset.input_shape(), spec.train
    params = params_of(spec)
    images = images_of(spec.dataset)
    dataset_bytes = None if images is None else sum(images) * math.prod(shape)
    # An image folder's size is known only when a worker loads it; it holds one image per class at least.
    least = images[0] if images is not None else least_images(spec)
    used = min(least, spec.dataset.limit or least)
    steps = math.ceil(used / train.batch_size)
    logged, per_epoch = (4, SERIES_PER_EPOCH + 1) if isinstance(spec.model, DcganModel) else (1, SERIES_PER_EPOCH)
    metric_points = train.epochs * (logged * (steps // train.log_every_steps) + per_epoch)
    states = {"adam": 2, "adamw": 2, "sgd": 1 if train.momentum else 0}[train.optimizer]
    memory = 4 * params * (2 + states) + (dataset_bytes or 0)
    step_bytes = 4 * train.batch_size * math.prod(shape)
    return Estimate(params, images, dataset_bytes, step_bytes, metric_points, memory)


def check_limits(spec: AnyJobSpec, *, max_params: int, max_dataset_bytes: int, max_metric_points: int) -> Estimate:
    """The job's estimate, or a 422 that gives the estimate and the limit it is over."""
    est = estimate(spec)
    over = [
        ("model", est.params, max_params, "parameters", "TRAINJOBS_MAX_PARAMS"),
        ("dataset", est.dataset_bytes, max_dataset_bytes, "bytes of images", "TRAINJOBS_MAX_DATASET_BYTES"),
        ("train", est.step_bytes, max_dataset_bytes, "bytes in one batch", "TRAINJOBS_MAX_DATASET_BYTES"),
        ("train", est.metric_points, max_metric_points, "metric points", "TRAINJOBS_MAX_METRIC_POINTS_PER_JOB"),
    ]
    for field, value, limit, what, setting in over:
        if value is not None and value > limit:
            raise InvalidRequest(
                f"{field}: this job would have about {value:,} {what}, over the limit of {limit:,} ({setting})",
                ("body", field),
            )
    return est
