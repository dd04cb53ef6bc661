"""Where the tensors live: the device a config names, bf16 autocast, and this process's DDP rank.

Inference (select, evaluate, predict) and training share these; none of them needs the
training engine.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.distributed as dist

from damnet.errors import DamnetError


class DeviceError(DamnetError):
    """The device a step was told to use is not there."""


def resolve_device(name: str) -> torch.device:
    """``"auto"``: CUDA when there is one, else the CPU; any other name as torch spells it.

    Raises :class:`DeviceError` for a name torch does not know, CUDA on a torch build without
    it or on a machine without a visible GPU, a CUDA index beyond the GPUs there are, and MPS
    where it is not available, before anything is allocated.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"--device {name}: not a torch device (auto, cpu, mps, cuda or cuda:N)") from None
    if device.type == "cuda":
        if torch.version.cuda is None:
            raise DeviceError(f"--device {name}: this torch build ({torch.__version__}) has no CUDA support; "
                              "use --device cpu (or auto), or install a CUDA build of torch")
        count = torch.cuda.device_count()
        if count == 0:
            raise DeviceError(f"--device {name}: no CUDA GPU is visible to this process (check the driver, "
                              "CUDA_VISIBLE_DEVICES and the pod's GPU request); use --device cpu (or auto)")
        if device.index is not None and device.index >= count:
            raise DeviceError(f"--device {name}: there are only {count} CUDA GPU(s) here (cuda:0 to "
                              f"cuda:{count - 1})")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"--device {name}: MPS (Apple GPU) is not available here; use --device cpu (or auto)")
    return device


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager[Any]:
    """A fresh bf16 autocast context on CUDA when ``enabled``; a no-op context on the CPU."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def rank_world() -> tuple[int, int]:
    """(rank, world size) of this process under ``torchrun``; (0, 1) outside DDP."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
