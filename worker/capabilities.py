"""What this worker says it is on each claim: its version and host, the job kinds, archs and datasets its
code can run (the names its specs accept: tests/worker/training/test_registries.py keeps them equal to
the code that serves them), and its device. Read once, at start, without importing torch on a CPU."""

from __future__ import annotations

import os
import socket

from app import __version__
from app.core.protocol import Capabilities, DeviceInfo
from app.core.specs import DATASET_NAMES, FINETUNE_ARCHS, JOB_KINDS, PRETRAIN_ARCHS


def device_info(device: str) -> DeviceInfo:
    if device.startswith("cuda"):
        import torch

        index = int(device.split(":", 1)[1]) if ":" in device else 0
        props = torch.cuda.get_device_properties(index)
        return DeviceInfo(name=f"{device} ({props.name})"[:100], memory_bytes=int(props.total_memory))
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        memory = None
    return DeviceInfo(name=device[:100], memory_bytes=memory)


def describe(device: str) -> Capabilities:
    return Capabilities(
        version=__version__,
        host=socket.gethostname()[:200],
        kinds=list(JOB_KINDS),
        archs=sorted({*PRETRAIN_ARCHS, *FINETUNE_ARCHS}),
        datasets=list(DATASET_NAMES),
        devices=[device_info(device)],
    )
