"""Whether a job fits its device, checked before any data is loaded: a job that cannot fit fails at once.

The need is ``app.core.estimates``' lower bound (weights, gradients, optimizer state, the images
on the device); the room is the device's free memory (CUDA: what the driver reports free; CPU:
the kernel's MemAvailable). A job refused here would surely have failed later, after its imports,
its data and maybe hours of epochs.
"""

from __future__ import annotations

from pathlib import Path

import torch

from app.core.estimates import estimate
from app.core.specs import AnyJobSpec

from .errors import DoesNotFit

GIB = 1024**3


def free_memory(device: str) -> int | None:
    """Bytes free on ``device``, or None where that cannot be told (MPS, no /proc)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _total = torch.cuda.mem_get_info(dev)
        return int(free)
    if dev.type == "cpu":
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def check_fits(spec: AnyJobSpec, device: str, free: int | None = None) -> None:
    """Raise DoesNotFit when the job needs more memory than ``device`` has free."""
    need = estimate(spec).memory_bytes
    room = free_memory(device) if free is None else free
    if room is not None and need > room:
        raise DoesNotFit(
            f"does not fit: the job needs at least {need / GIB:.1f} GiB on {device} (weights, gradients, "
            f"optimizer state, images) and {room / GIB:.1f} GiB are free; use a smaller model or dataset, "
            "or a worker with more memory"
        )
