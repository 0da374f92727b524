"""Model shapes: the article's autoencoder, encoders that load into backbones, ImageNet weights."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from torch import nn

from app.core.specs import (
    SEED_MLP_BOTTLENECK,
    SEED_MLP_HIDDEN,
    ConvAutoencoderModel,
    FinetuneModel,
    InitSpec,
    SeedMlpAutoencoderModel,
)
from tests.worker.training.helpers import Recorder, pretrain, synthetic
from worker.training import TrainingError, run_training
from worker.training.nets import build_autoencoder, build_classifier, count_parameters, load_imagenet_weights

# The article's Linear layers, in order (section 4.1): encoder then decoder.
ARTICLE_WIDTHS = [3072, 4096, 8192, 16384, 8192, 4096, 3072, 4096, 8192, 16384, 8192, 4096, 3072]


def test_seed_autoencoder_has_the_article_layers_and_parameter_count() -> None:
    with torch.device("meta"):  # 721M parameters: count them without allocating 2.9 GB
        model = build_autoencoder(SeedMlpAutoencoderModel(arch="seed_mlp_autoencoder"), (3, 32, 32))
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == list(itertools.pairwise(ARTICLE_WIDTHS))
    norms = [m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    assert norms == [4096, 8192, 16384, 8192, 4096] * 2
    expected = sum(i * o + o for i, o in itertools.pairwise(ARTICLE_WIDTHS)) + 2 * sum(norms)
    assert count_parameters(model) == expected and 720e6 < expected < 722e6
    assert isinstance(next(iter(model.encoder.children())), nn.Flatten)  # the flatten the article's code lacked
    assert model(torch.empty(2, 3, 32, 32, device="meta")).shape == (2, 3, 32, 32)


def test_seed_autoencoder_shrunk_16x_takes_real_training_steps(recorder: Recorder) -> None:
    model = {
        "arch": "mlp_autoencoder",
        "hidden": [w // 16 for w in SEED_MLP_HIDDEN],
        "bottleneck": SEED_MLP_BOTTLENECK // 16,
    }
    result = run_training(pretrain(model, synthetic(num_samples=40, image_shape=[3, 32, 32])), recorder.context())
    assert result["steps"] == 2 and 0 < result["train_loss"] < 2


@pytest.mark.parametrize(
    ("backbone", "small_input", "channels"),
    [("small_cnn", False, 1), ("small_cnn", False, 3), ("resnet18", True, 3), ("resnet18", False, 1)],
)
def test_conv_autoencoder_encoder_is_the_finetune_backbone(backbone: str, small_input: bool, channels: int) -> None:
    shape = (channels, 32, 32)
    ae = build_autoencoder(
        ConvAutoencoderModel(arch="conv_autoencoder", backbone=backbone, small_input=small_input),  # type: ignore[arg-type]
        shape,
    )
    clf = build_classifier(FinetuneModel(arch=backbone, small_input=small_input), shape, 10)  # type: ignore[arg-type]
    ae_state, clf_state = ae.encoder.state_dict(), clf.encoder.state_dict()
    assert {k: v.shape for k, v in ae_state.items()} == {k: v.shape for k, v in clf_state.items()}
    clf.encoder.load_state_dict(ae_state, strict=True)
    ae.eval()
    assert ae(torch.zeros(2, *shape)).shape == (2, *shape)


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 12, 20), (1, 28, 28), (3, 64, 48)])
def test_conv_decoder_restores_any_input_shape(shape: tuple[int, int, int]) -> None:
    ae = build_autoencoder(ConvAutoencoderModel(arch="conv_autoencoder"), shape).eval()
    with torch.no_grad():
        out = ae(torch.zeros(2, *shape))
    assert out.shape == (2, *shape) and float(out.abs().max()) <= 1


def test_imagenet_weights_come_from_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.models import resnet18

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    model = FinetuneModel(arch="resnet18", num_classes=10, init=InitSpec(**{"from": "imagenet"}))
    clf = build_classifier(model, (3, 32, 32), 10)
    with pytest.raises(TrainingError, match=str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")):
        load_imagenet_weights(clf.encoder, 3, small_input=False)

    torch.manual_seed(123)
    reference = resnet18(weights=None).state_dict()  # the shapes of the real file
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(reference, tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    load_imagenet_weights(clf.encoder, 3, small_input=False)
    loaded = clf.encoder.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in reference.items() if not k.startswith("fc."))

    gray = build_classifier(model, (1, 28, 28), 10)
    load_imagenet_weights(gray.encoder, 1, small_input=False)
    # A gray image seen as RGB meets the sum of the three RGB filters.
    assert torch.allclose(gray.encoder.state_dict()["conv1.weight"][:, 0], reference["conv1.weight"].sum(1))
    small = build_classifier(FinetuneModel(arch="resnet18", small_input=True), (3, 32, 32), 10)
    load_imagenet_weights(small.encoder, 3, small_input=True)
    assert torch.equal(small.encoder.state_dict()["layer4.1.conv2.weight"], reference["layer4.1.conv2.weight"])
