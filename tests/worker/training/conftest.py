"""Fixtures of the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.worker.training.helpers import Recorder


@pytest.fixture
def recorder(tmp_path: Path) -> Recorder:
    return Recorder(data_dir=tmp_path / "data", work_dir=tmp_path / "work")


@pytest.fixture(autouse=True)
def _two_threads() -> None:
    torch.set_num_threads(2)  # results are compared bit for bit; keep the thread count fixed
