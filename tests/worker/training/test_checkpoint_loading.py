"""README's five lines: a downloaded checkpoint loads into the network its spec describes."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from app.core.specs import parse_job_spec
from tests.worker.training.helpers import Recorder, finetune, pretrain
from worker.training import run_training
from worker.training.nets import build_model


@pytest.mark.parametrize(
    "spec",
    [
        pretrain({"arch": "mlp_autoencoder", "hidden": [32], "bottleneck": 8}),
        finetune({"arch": "small_cnn"}),
    ],
    ids=["pretrain", "finetune"],
)
def test_a_checkpoint_loads_into_the_model_its_spec_builds(recorder: Recorder, spec: object) -> None:
    run_training(spec, recorder.context())  # type: ignore[arg-type]
    path = next(p for tag, p, *_ in recorder.checkpoints if tag == "last" and p.suffix == ".pt")

    ckpt = torch.load(path, weights_only=True)
    model = build_model(parse_job_spec(ckpt["spec"]))
    model.load_state_dict(ckpt["model"])

    weights = load_file(path.with_suffix(".safetensors"))
    assert weights.keys() == model.state_dict().keys()
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
