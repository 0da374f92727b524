"""Every name a job spec accepts has the code that serves it, and a name no code serves fails loudly.

Adding a dataset, an arch or a kind is one spec model plus one registry entry: this test is what
notices when the second half is missing (docs/extending.md).
"""

from __future__ import annotations

import typing

import pytest

from app.core.registry import UnknownName
from app.core.specs import DATASET_NAMES, FINETUNE_ARCHS, JOB_KINDS, PRETRAIN_ARCHS, TorchvisionDataset, parse_job_spec
from app.core.specs.datasets import TORCHVISION_SOURCES
from app.core.specs.networks import Backbone
from tests.conftest import pretrain_body
from worker.training import TASKS
from worker.training.data import LOADERS, load_dataset
from worker.training.dcgan import GANS
from worker.training.nets import AUTOENCODERS, CLASSIFIERS, CONV_BACKBONES, NETWORKS, build_autoencoder


def test_every_spec_name_has_its_registry_entry_and_nothing_more() -> None:
    assert TASKS.names() == NETWORKS.names() == sorted(JOB_KINDS)
    assert sorted(AUTOENCODERS.names() + GANS.names()) == sorted(PRETRAIN_ARCHS)
    assert CLASSIFIERS.names() == sorted(FINETUNE_ARCHS)
    assert LOADERS.names() == sorted(DATASET_NAMES)
    assert CONV_BACKBONES.names() == sorted(typing.get_args(Backbone))
    assert sorted(TORCHVISION_SOURCES) == sorted(typing.get_args(TorchvisionDataset.model_fields["name"].annotation))


@pytest.mark.parametrize(
    ("registry", "name", "known"),
    [
        (TASKS, "gan", "finetune, pretrain"),
        (AUTOENCODERS, "vae", "conv_autoencoder, mlp_autoencoder, seed_mlp_autoencoder"),
        (GANS, "wgan", "dcgan"),
        (CLASSIFIERS, "vit", "dcgan_discriminator, mlp, resnet18, small_cnn"),
        (LOADERS, "imagenet", "cifar10, cifar100, digits, fashion_mnist, imagefolder, mnist, synthetic"),
        (CONV_BACKBONES, "vgg", "resnet18, small_cnn"),
    ],
)
def test_an_unknown_name_raises_naming_the_known_ones(registry: typing.Any, name: str, known: str) -> None:
    with pytest.raises(UnknownName, match=f"unknown .* '{name}'; known: {known}"):
        registry[name]


def test_the_builders_look_names_up_in_their_registry(tmp_path: typing.Any) -> None:
    spec = parse_job_spec(pretrain_body())
    broken = spec.model.model_copy(update={"arch": "vae"})
    with pytest.raises(UnknownName, match="unknown pretrain arch 'vae'"):
        build_autoencoder(broken, (1, 8, 8))
    dataset = spec.dataset.model_copy(update={"name": "imagenet"})
    with pytest.raises(UnknownName, match="unknown dataset 'imagenet'"):
        load_dataset(dataset, tmp_path, 0)
