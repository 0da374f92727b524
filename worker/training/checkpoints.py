"""Checkpoint files: written atomically, readable with ``torch.load(path, weights_only=True)``.

A checkpoint is one dict of tensors, numbers, strings, lists and dicts (see ``loop.py``
for its keys). Next to each ``<tag>.pt`` the loop writes ``<tag>.safetensors``: the model's
weights alone, loadable without pickle, the file to hand to users.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from app.core.files import fsync_path, link_or_copy, replace_durably


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Run ``write`` on a temporary file beside ``path``, make it durable, then rename it over ``path``.

    A reader sees either the old file or the complete new one, even if the process dies midway.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        fsync_path(tmp)
        replace_durably(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def link_atomically(source: Path, path: Path) -> None:
    """Make ``path`` a second name of the complete file ``source`` (a copy where hard links fail)."""
    write_atomically(path, lambda tmp: link_or_copy(source, tmp))


def save_torch(obj: Any, path: Path) -> None:
    """``torch.save`` made atomic and durable."""
    write_atomically(path, lambda tmp: torch.save(obj, tmp))


def save_weights(state_dict: Mapping[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Write a model's weights as safetensors (contiguous CPU copies), atomically."""
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in state_dict.items()}
    write_atomically(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint dict onto the CPU without unpickling code."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict):
        raise ValueError(f"{path} does not hold a checkpoint dict")
    return obj


def load_model_weights(path: Path) -> dict[str, torch.Tensor]:
    """The model state dict of a ``.pt`` checkpoint or a ``.safetensors`` weights file."""
    if path.suffix == ".safetensors":
        return load_file(str(path), device="cpu")
    model = load_checkpoint(path).get("model")
    if not isinstance(model, dict):
        raise ValueError(f"{path} has no 'model' state dict")
    return model
