"""The networks: backbones, the autoencoders built on them, and the classifiers.

Every model keeps its feature extractor under the attribute ``encoder``: an autoencoder is
``encoder`` + ``decoder``, a classifier is ``encoder`` + ``head``. A checkpoint's state dict
therefore holds the backbone under the fixed prefix ``encoder.``, and ``encoder_state_dict``
takes it out to load into another model's ``encoder`` (pretrain -> finetune).

- ``mlp`` backbone: Flatten, [Linear, BatchNorm1d, ReLU] per hidden width, Linear to the
  bottleneck, Tanh. Its decoder mirrors it and ends in Tanh, reshaped to the input.
- ``seed_mlp_autoencoder``: that MLP with the article's exact widths (about 721M parameters),
  with the flatten the article forgot.
- ``small_cnn``: four conv-BN-ReLU blocks (32-64-128-256 channels, two 2x2 max-pools) and a
  global average pool: 256 features, any channel count, 4x4 images and up.
- ``resnet18``: torchvision's, fc removed (512 features); the first conv takes any channel
  count; ``small_input`` uses a 3x3 stride-1 stem without max-pool (32x32 images).
- ``conv_autoencoder``: the encoder is exactly one of those two conv backbones; the decoder
  maps the feature vector to a 4x4 (or smaller) grid and doubles it up to the input size.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from app.core.registry import Registry
from app.core.specs import (
    SEED_MLP_BOTTLENECK,
    SEED_MLP_HIDDEN,
    AnyJobSpec,
    AnyPretrainModel,
    ConvAutoencoderModel,
    DcganModel,
    FinetuneModel,
    FinetuneSpec,
    MlpAutoencoderModel,
    PretrainSpec,
    SeedMlpAutoencoderModel,
    Shape,
)
from app.core.states import JobKind

from .checkpoints import load_model_weights
from .errors import TrainingError

ENCODER_PREFIX = "encoder."
SMALL_CNN_FEATURES = 256
RESNET18_FEATURES = 512


class Autoencoder(nn.Module):
    encoder: nn.Module
    decoder: nn.Module

    def __init__(self, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.decoder(self.encoder(x))
        return out


class Classifier(nn.Module):
    encoder: nn.Module
    head: nn.Linear

    def __init__(self, encoder: nn.Module, features: int, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.head(self.encoder(x))
        return out


# --- backbones ----------------------------------------------------------------------


def mlp_encoder(shape: Shape, hidden: Sequence[int], bottleneck: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(shape)
    for h in hidden:
        layers += [nn.Linear(width, h), nn.BatchNorm1d(h), nn.ReLU(inplace=True)]
        width = h
    layers += [nn.Linear(width, bottleneck), nn.Tanh()]
    return nn.Sequential(*layers)


def mlp_decoder(shape: Shape, hidden: Sequence[int], bottleneck: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = bottleneck
    for h in reversed(hidden):
        layers += [nn.Linear(width, h), nn.BatchNorm1d(h), nn.ReLU(inplace=True)]
        width = h
    layers += [nn.Linear(width, math.prod(shape)), nn.Tanh(), nn.Unflatten(1, shape)]
    return nn.Sequential(*layers)


def _conv_block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def small_cnn(channels: int) -> nn.Sequential:
    return nn.Sequential(
        *_conv_block(channels, 32),
        *_conv_block(32, 64),
        nn.MaxPool2d(2),
        *_conv_block(64, 128),
        nn.MaxPool2d(2),
        *_conv_block(128, SMALL_CNN_FEATURES),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


def resnet18(channels: int, small_input: bool) -> nn.Module:
    from torchvision.models import resnet18 as torchvision_resnet18

    net = torchvision_resnet18(weights=None)
    if small_input:
        net.conv1 = nn.Conv2d(channels, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif channels != 3:
        net.conv1 = nn.Conv2d(channels, 64, 7, stride=2, padding=3, bias=False)
    net.fc = nn.Identity()
    return cast(nn.Module, net)


def conv_decoder(features: int, shape: Shape) -> nn.Sequential:
    """Feature vector -> (C, H, W) in [-1, 1]: a small grid doubled until it covers H x W, then cropped."""
    c, h, w = shape
    doublings = max(0, math.ceil(math.log2(max(h, w) / 4)))
    h0, w0 = math.ceil(h / 2**doublings), math.ceil(w / 2**doublings)
    width = 256
    layers: list[nn.Module] = [nn.Linear(features, width * h0 * w0), nn.Unflatten(1, (width, h0, w0))]
    for _ in range(doublings):
        layers += [nn.Upsample(scale_factor=2, mode="nearest"), *_conv_block(width, max(32, width // 2))]
        width = max(32, width // 2)
    layers += [_Crop(h, w), nn.Conv2d(width, c, 3, padding=1), nn.Tanh()]
    return nn.Sequential(*layers)


class _Crop(nn.Module):
    def __init__(self, h: int, w: int) -> None:
        super().__init__()
        self.h, self.w = h, w

    def forward(self, x: Tensor) -> Tensor:
        return x[:, :, : self.h, : self.w]


ConvBackbone = Callable[[int, bool], tuple[nn.Module, int]]
CONV_BACKBONES: Registry[ConvBackbone] = Registry("conv backbone")
"""Backbone name -> (channels, small_input) -> (the feature extractor, its feature width)."""
CONV_BACKBONES.add("small_cnn", lambda channels, _small: (small_cnn(channels), SMALL_CNN_FEATURES))
CONV_BACKBONES.add("resnet18", lambda channels, small: (resnet18(channels, small), RESNET18_FEATURES))


# --- models of a job -------------------------------------------------------------------

AUTOENCODERS: Registry[Callable[[Any, Shape], Autoencoder]] = Registry("pretrain arch")
"""Pretrain ``model.arch`` -> (its model spec, the image shape) -> the autoencoder."""
CLASSIFIERS: Registry[Callable[[FinetuneModel, Shape, int], Classifier]] = Registry("finetune arch")
"""Finetune ``model.arch`` -> (its model spec, the image shape, classes) -> the classifier."""


@AUTOENCODERS.register("mlp_autoencoder")
def mlp_autoencoder(model: MlpAutoencoderModel, shape: Shape) -> Autoencoder:
    return Autoencoder(
        mlp_encoder(shape, model.hidden, model.bottleneck), mlp_decoder(shape, model.hidden, model.bottleneck)
    )


@AUTOENCODERS.register("seed_mlp_autoencoder")
def seed_mlp_autoencoder(_model: SeedMlpAutoencoderModel, shape: Shape) -> Autoencoder:
    return Autoencoder(
        mlp_encoder(shape, SEED_MLP_HIDDEN, SEED_MLP_BOTTLENECK),
        mlp_decoder(shape, SEED_MLP_HIDDEN, SEED_MLP_BOTTLENECK),
    )


@AUTOENCODERS.register("conv_autoencoder")
def conv_autoencoder(model: ConvAutoencoderModel, shape: Shape) -> Autoencoder:
    small = model.small_input and model.backbone == "resnet18"
    encoder, features = CONV_BACKBONES[model.backbone](shape[0], small)
    return Autoencoder(encoder, conv_decoder(features, shape))


@CLASSIFIERS.register("mlp")
def mlp_classifier(model: FinetuneModel, shape: Shape, num_classes: int) -> Classifier:
    encoder = mlp_encoder(shape, model.mlp_hidden, model.mlp_bottleneck)
    return Classifier(encoder, model.mlp_bottleneck, num_classes)


@CLASSIFIERS.register("small_cnn", "resnet18")
def conv_classifier(model: FinetuneModel, shape: Shape, num_classes: int) -> Classifier:
    encoder, features = CONV_BACKBONES[model.arch](shape[0], model.small_input)
    return Classifier(encoder, features, num_classes)


def build_autoencoder(model: AnyPretrainModel, shape: Shape) -> Autoencoder:
    return AUTOENCODERS[model.arch](model, shape)


def build_classifier(model: FinetuneModel, shape: Shape, num_classes: int) -> Classifier:
    return CLASSIFIERS[model.arch](model, shape, num_classes)


def _pretrain_network(spec: AnyJobSpec) -> nn.Module:
    assert isinstance(spec, PretrainSpec)
    if isinstance(spec.model, DcganModel):
        from .dcgan import GANS  # it builds on this module

        return GANS[spec.model.arch](spec.model, spec.dataset.input_shape())
    return build_autoencoder(spec.model, spec.dataset.input_shape())


def _finetune_network(spec: AnyJobSpec) -> nn.Module:
    assert isinstance(spec, FinetuneSpec) and spec.model.num_classes is not None  # filled in by validation
    return build_classifier(spec.model, spec.dataset.input_shape(), spec.model.num_classes)


NETWORKS: Registry[Callable[[AnyJobSpec], nn.Module]] = Registry("job kind")
"""Job kind -> the network its spec describes."""
NETWORKS.add(JobKind.PRETRAIN, _pretrain_network)
NETWORKS.add(JobKind.FINETUNE, _finetune_network)


def is_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- initial weights ---------------------------------------------------------------


def encoder_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The ``encoder.`` entries of a model state dict, without the prefix."""
    return {k[len(ENCODER_PREFIX) :]: v for k, v in state.items() if k.startswith(ENCODER_PREFIX)}


def load_encoder(encoder: nn.Module, checkpoint: Path) -> None:
    """Load a pretrain (or finetune) checkpoint's encoder into ``encoder``; every tensor must fit."""
    try:
        weights = encoder_state_dict(load_model_weights(checkpoint))
    except (OSError, ValueError, RuntimeError) as e:
        raise TrainingError(f"cannot read the base checkpoint {checkpoint}: {e}") from e
    if not weights:
        raise TrainingError(f"the base checkpoint {checkpoint} has no '{ENCODER_PREFIX}' weights")
    try:
        encoder.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise TrainingError(f"the encoder in {checkpoint} does not fit this backbone: {detail}") from e


def load_imagenet_weights(encoder: nn.Module, channels: int, small_input: bool) -> None:
    """torchvision's ResNet18 ImageNet weights, from the torch hub cache only (no download, no hang).

    With another channel count the first conv's weights are summed over RGB and spread over the
    channels; with ``small_input`` the 3x3 stem keeps its random start.
    """
    from torchvision.models import ResNet18_Weights

    weights = ResNet18_Weights.IMAGENET1K_V1
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    if not cached.is_file():
        raise TrainingError(
            f"ImageNet weights for resnet18 are not at {cached}: download {weights.url} to that path "
            "(or point TORCH_HOME at a folder holding hub/checkpoints/ with it)"
        )
    state: dict[str, Tensor] = weights.get_state_dict(progress=False)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    if small_input:
        del state["conv1.weight"]
    elif channels != 3:
        state["conv1.weight"] = state["conv1.weight"].sum(1, keepdim=True).repeat(1, channels, 1, 1) / channels
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not (small_input and k == "conv1.weight")]:
        raise TrainingError(f"the ImageNet weights at {cached} do not fit resnet18: missing {missing}")


def build_model(spec: AnyJobSpec) -> nn.Module:
    """The network a job trains, from its spec (e.g. to load a downloaded checkpoint's weights)."""
    return NETWORKS[spec.kind](spec)
