"""A SIMULATED labeler, for tests and demos: the Label Studio export a person would have made."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import numpy as np

from damnet.labels.export import brush_result


def simulate_label_studio_export(tasks: list[dict], truth: Callable[[dict], np.ndarray],
                                 annotator: str = "simulated-labeler", seed: int = 0) -> list[dict]:
    """SIMULATED labeler: what Label Studio's JSON export would hold if a person had labelled
    every task exactly as ``truth(task)`` says (a (H, W) 0/1 mask).

    Each task keeps its ``data`` and ``predictions`` and gets one submitted annotation
    ``{"id", "completed_by", "result", "was_cancelled": False, "ground_truth": False,
    "lead_time", "created_at", "updated_at", "task"}`` whose result is one brush region (none
    when the mask is empty, as a labeler who sees no change submits an empty annotation).
    For tests and demos only: no person looked at these tiles.
    """
    rng = np.random.default_rng(seed)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    out = []
    for n, task in enumerate(tasks):
        mask = (np.asarray(truth(task)) > 0).astype(np.uint8)
        result = []
        if mask.any():
            rid = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz0123456789"), 10))
            result.append({**brush_result(mask, result_id=rid), "origin": "manual"})
        stamp = (start + timedelta(minutes=n)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        item = copy.deepcopy(dict(task))
        item["annotations"] = [{
            "id": 1000 + n,
            "completed_by": {"id": 1, "email": f"{annotator}@example.invalid"},
            "result": result,
            "was_cancelled": False,
            "ground_truth": False,
            "lead_time": round(float(rng.uniform(20.0, 180.0)), 3),
            "created_at": stamp,
            "updated_at": stamp,
            "task": task.get("id"),
        }]
        out.append(item)
    return out
