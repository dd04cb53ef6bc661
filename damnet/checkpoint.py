"""Checkpoint and weight files: tensors and plain data only, loaded with ``weights_only=True``.

:func:`damnet.train.fit` writes :data:`CHECKPOINT` into its output folder; steps and
inference read it (or any ChangeNet / encoder state dict) back with the helpers here, without
importing the training engine.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from damnet import storage
from damnet.errors import DamnetError
from damnet.models import ChangeNet

CHECKPOINT = "checkpoint.pt"  #: the file name of a training run's checkpoint in its output folder


class CheckpointError(DamnetError):
    """A model, weight or checkpoint file that cannot be read (safely)."""


def unreadable(exc: BaseException) -> str:
    """Why ``torch.load(..., weights_only=True)`` refused a file, in a few words a user can act on.

    torch's own message is several lines and ends by suggesting ``weights_only=False``, which
    would run whatever code the file holds: never passed on.
    """
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) and ("Unsupported global" in text or "GLOBAL" in text):
        return ("it holds Python objects besides tensors and plain data, and model files are read "
                "without running code stored in them")
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return "damaged, truncated, or not a torch file"


def read_state(path: str | Path, name: str | None = None) -> Any:
    """``torch.load`` of a local file with ``weights_only=True``; a :class:`CheckpointError` naming
    ``name`` (default: the path) if it cannot be read."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever torch raises, the file is the user's input
        raise CheckpointError(f"{name or path}: not a readable checkpoint ({unreadable(exc)})") from None


def load_checkpoint(uri: str) -> dict[str, Any]:
    """A checkpoint written by :func:`damnet.train.fit` (tensors and plain data only; no pickled code)."""
    with storage.local_copy(uri) as path:
        state = read_state(path, uri)
    if not isinstance(state, dict):
        raise CheckpointError(f"{uri}: not a checkpoint or state dict (holds a {type(state).__name__})")
    return state


def save_state(uri: str, state: dict[str, Any]) -> None:
    """``torch.save`` of ``state`` to a file or URI, atomically (temp file, then rename/commit)."""
    with storage.storage_for(uri).writing(uri, suffix=".pt") as tmp:
        torch.save(state, tmp)


def load_weights(model: ChangeNet, uri: str, part: str = "all") -> None:
    """Load weights from a file or URI into ``model`` (``part``: "all" or "encoder").

    Accepts a checkpoint of :func:`damnet.train.fit` (its ``model`` entry), a ChangeNet state
    dict, or an encoder-only state dict (e.g. from MAE pretraining elsewhere). Loaded with
    ``weights_only=True``: nothing in the file is executed.
    """
    state = load_checkpoint(uri)
    if "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if part not in ("all", "encoder"):
        raise ValueError(f"part must be 'all' or 'encoder', got {part!r}")
    target: nn.Module = model
    if part == "encoder":
        target = model.encoder
        prefix = "encoder."
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)} or state
    try:
        missing, unexpected = target.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        first = str(exc).strip().splitlines()[-1].strip()
        raise DamnetError(f"{uri}: weights do not fit this model ({first})") from None
    if unexpected or (missing and part == "encoder"):
        raise DamnetError(f"{uri}: weights do not fit this model (missing {list(missing)[:3]}, "
                          f"unexpected {list(unexpected)[:3]})")
    if missing:
        raise DamnetError(f"{uri}: weights do not fit this model (missing {list(missing)[:3]})")
