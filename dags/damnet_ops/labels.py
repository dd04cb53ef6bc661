"""Waiting for labels without holding a worker slot: a deferrable sensor and its trigger.

The fine-tune DAG starts with :class:`LabelsSensor`. It asks ``damnet labels-status`` (run
as ``python -m components.labels_status``: it loads no other step, so a check takes a
fraction of a second) whether the region's label inbox has labels; the command knows where
the inbox is. If it has, the sensor succeeds at once; otherwise it defers to
:class:`LabelsArrivedTrigger`, which runs the same check from the triggerer process and
wakes the task when labels appear. (The triggerer needs this dags folder on its
``PYTHONPATH`` to import the trigger, and the damnet package installed; the project image
has both.)

Where a Label Studio server is configured (``LABEL_STUDIO_URL`` and ``LABEL_STUDIO_API_KEY``
in the environment of the worker and the triggerer), the sensor first pushes the region's
tasks to it (``damnet labels-push``: idempotent), and every check runs ``labels-status
--pull``: it asks the server how many tasks are done and pulls the export into the inbox when
all are. A server that cannot be reached for a while (exit 75) is logged and asked again at
the next poll. Without a server, the file drop: the inbox is checked as it is.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from datetime import timedelta

from airflow.sdk import BaseSensorOperator
from airflow.triggers.base import BaseTrigger, TriggerEvent

from damnet_ops.workflow import EXIT_CODES

log = logging.getLogger(__name__)
#: exit status of a damnet command that could not reach the Label Studio server (a retry may help)
UNAVAILABLE = EXIT_CODES["unavailable"]


def label_studio_configured() -> bool:
    return bool(os.environ.get("LABEL_STUDIO_URL"))


def _damnet(module: str, store: str, region: str, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", module, "--store", store, "--region", region, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def _last_line(text: str) -> str:
    lines = text.strip().splitlines() or ["no output"]
    return lines[-1]


def labels_present(store: str, region: str) -> str | None:
    """The URI of the region's returned labels, or None (``damnet labels-status --json --pull``:
    with a Label Studio server, pulled from it once every task is done)."""
    done = _damnet("components.labels_status", store, region, "--json", "--pull")
    if done.returncode == UNAVAILABLE:
        log.warning("labels of %s: %s; asking again at the next poll", region, _last_line(done.stderr))
        return None
    if done.returncode != 0:
        raise RuntimeError(f"damnet labels-status exited with {done.returncode}: {_last_line(done.stderr)}")
    status = json.loads(_last_line(done.stdout))
    server = status.get("server")
    if server and not status["labels"]:
        log.info("labels of %s: %s of %s task(s) done in %s/projects/%s", region, server["done"],
                 server["tasks"], server["url"], server["project"])
    return status["labels"]


def push_tasks(store: str, region: str) -> str:
    """Push the region's tasks to the Label Studio server (``damnet labels-push``); its summary line."""
    done = _damnet("components.labels_push", store, region, "--json")
    if done.returncode != 0:
        raise RuntimeError(f"damnet labels-push exited with {done.returncode}: {_last_line(done.stderr)}")
    s = json.loads(_last_line(done.stdout))
    return (f"Label Studio project {s['project_url']}: {s['added']} task(s) added, {s['present']} already "
            f"there, of {s['tasks']}")


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
        if label_studio_configured():
            self.log.info("%s", push_tasks(self.store, self.region))
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
