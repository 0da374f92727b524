"""What this worker says it is on each claim and heartbeat: its version and host, the job kinds, archs and
datasets its code can run (the names its specs accept: tests/worker/training/test_registries.py keeps them
equal to the code that serves them), its devices and which are busy. Described once, at start, without
importing torch on a CPU; ``Inventory.capabilities`` says which devices are free at the moment."""

from __future__ import annotations

import os
import socket
from collections.abc import Collection, Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Inventory:
    """The devices this worker manages (``cuda:0``, ``cuda:1``, ... or one ``cpu``), each described once."""

    names: tuple[str, ...]
    infos: tuple[DeviceInfo, ...]

    @classmethod
    def of(cls, devices: Sequence[str]) -> Inventory:
        return cls(tuple(devices), tuple(device_info(d) for d in devices))

    @property
    def gpus(self) -> int:
        return sum(name.startswith("cuda") for name in self.names)

    def capabilities(self, busy: Collection[str] = ()) -> Capabilities:
        """This worker now, with ``busy`` devices running jobs."""
        return Capabilities(
            version=__version__,
            host=socket.gethostname()[:200],
            kinds=list(JOB_KINDS),
            archs=sorted({*PRETRAIN_ARCHS, *FINETUNE_ARCHS}),
            datasets=list(DATASET_NAMES),
            devices=[
                info.model_copy(update={"busy": name in busy})
                for name, info in zip(self.names, self.infos, strict=True)
            ],
            gpus=self.gpus,
            free=sum(name not in busy for name in self.names),
            distributed=True,
        )


def describe(device: str) -> Capabilities:
    """A worker of one device, idle."""
    return Inventory.of([device]).capabilities()
