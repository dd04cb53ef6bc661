"""Where the tensors live: the device a config names, bf16 autocast, and this process's DDP rank.

Inference (select, evaluate, predict) and training share these; none of them needs the
training engine.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.distributed as dist


def resolve_device(name: str) -> torch.device:
    """``"auto"``: CUDA when there is one, else the CPU; any other name as torch spells it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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
