"""Waiting for labels without holding a worker slot: a deferrable sensor and its trigger.

The fine-tune DAG starts with :class:`LabelsSensor`. It asks ``damnet labels-status`` (run
as ``python -m components.labels_status``: it loads no other step, so a check takes a
fraction of a second) whether the region's label inbox has labels; the command knows where
the inbox is. If it has, the sensor succeeds at once; otherwise it defers to
:class:`LabelsArrivedTrigger`, which runs the same check from the triggerer process and
wakes the task when labels appear. (The triggerer needs this dags folder on its
``PYTHONPATH`` to import the trigger, and the damnet package installed; the project image
has both.)
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import timedelta

from airflow.sdk import BaseSensorOperator
from airflow.triggers.base import BaseTrigger, TriggerEvent


def labels_present(store: str, region: str) -> str | None:
    """The URI of the region's returned labels, or None (``damnet labels-status --json``)."""
    cmd = [sys.executable, "-m", "components.labels_status", "--store", store, "--region", region, "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or ["no output"]
        raise RuntimeError(f"damnet labels-status exited with {done.returncode}: {lines[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["labels"]


class LabelsArrivedTrigger(BaseTrigger):
    def __init__(self, store: str, region: str, poll_seconds: float = 60.0) -> None:
        super().__init__()
        self.store, self.region, self.poll_seconds = store, region, poll_seconds

    def serialize(self):
        return ("damnet_ops.labels.LabelsArrivedTrigger",
                {"store": self.store, "region": self.region, "poll_seconds": self.poll_seconds})

    async def run(self):
        while True:
            found = await asyncio.to_thread(labels_present, self.store, self.region)
            if found:
                yield TriggerEvent({"labels": found})
                return
            await asyncio.sleep(self.poll_seconds)


class LabelsSensor(BaseSensorOperator):
    """Succeeds when the region's labels are in the store; defers while they are not."""

    template_fields = ("store", "region")

    def __init__(self, *, store: str, region: str, poll_seconds: float = 300.0, **kwargs) -> None:
        kwargs.setdefault("timeout", timedelta(days=30).total_seconds())
        super().__init__(**kwargs)
        self.store, self.region, self.poll_seconds = store, region, poll_seconds

    def execute(self, context):
        found = labels_present(self.store, self.region)
        if found:
            self.log.info("labels for %s: %s", self.region, found)
            return found
        self.log.info("no labels for %s yet; deferring (poll every %s s)", self.region, self.poll_seconds)
        self.defer(trigger=LabelsArrivedTrigger(self.store, self.region, self.poll_seconds),
                   method_name="execute_complete", timeout=timedelta(seconds=self.timeout))

    def execute_complete(self, context, event=None):
        self.log.info("labels for %s arrived: %s", self.region, (event or {}).get("labels"))
        return (event or {}).get("labels")

    def poke(self, context) -> bool:  # used only if someone sets deferrable off via mode=poke
        return labels_present(self.store, self.region) is not None
