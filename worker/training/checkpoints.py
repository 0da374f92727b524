"""Checkpoint files: written atomically, hashed as they are written, readable with ``torch.load(path, weights_only=True)``.

A checkpoint is one dict of tensors, numbers, strings, lists and dicts (see ``saving.py`` for its keys).
Next to each ``<tag>.pt`` the loop writes ``<tag>.safetensors``: the model's weights alone, loadable
without pickle, the file to hand to users.

Each writer returns the file's sha256, computed from the bytes as they go to the file: the worker sends it
with the upload and reads the file once, to send it (the service checks it as it receives). The files live
in the run's scratch folder until the worker has uploaded them, so they are renamed into place but not
fsynced: the service, which fsyncs what it receives, is where a checkpoint is durable.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors.torch import load_file, save, save_file

from app.core.files import replace_durably

WEIGHTS_IN_MEMORY = 1 << 30
"""Weights up to this size are serialised in memory and hashed there; larger ones are written, then read back."""


class HashingWriter:
    """A binary file that hashes what is written to it."""

    def __init__(self, file: BinaryIO) -> None:
        self.file, self.hash = file, hashlib.sha256()

    def write(self, data: bytes | memoryview) -> int:
        self.hash.update(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


def write_atomically(path: Path, write: Callable[[HashingWriter], None], *, durable: bool = False) -> str:
    """Run ``write`` on a temporary file beside ``path``, then rename it over ``path``; returns its sha256.

    A reader sees either the old file or the complete new one; ``durable``: also after a crash of the machine.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as f:
            writer = HashingWriter(f)
            write(writer)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        if durable:
            replace_durably(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return writer.hash.hexdigest()


def save_torch(obj: Any, path: Path, *, durable: bool = False) -> str:
    """``torch.save`` made atomic (and ``durable``); returns the file's sha256."""
    return write_atomically(path, lambda f: torch.save(obj, f), durable=durable)  # type: ignore[arg-type]


def save_weights(state_dict: Mapping[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> str:
    """Write a model's weights as safetensors (contiguous CPU copies), atomically; returns the file's sha256."""
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in state_dict.items()}
    if sum(t.numel() * t.element_size() for t in tensors.values()) <= WEIGHTS_IN_MEMORY:
        data = save(tensors, metadata=metadata)
        return write_atomically(path, lambda f: _write_all(f, data))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        digest = sha256_of(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return digest


def _write_all(f: HashingWriter, data: bytes) -> None:
    f.write(data)


def sha256_of(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


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
