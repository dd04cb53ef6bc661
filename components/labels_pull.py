"""Pull a region's annotations from Label Studio into its label inbox, once every task is done.

Asks the region's project (``damnet-REGION``, made by ``damnet labels-push``) how many tasks of
the current export have an annotation. When all have (or with ``--partial``, those that have),
exports them with Label Studio's JSON export, checks the export as import-labels will
(known tiles, sizes, RLE, no conflicting annotations: a bad export is refused and nothing is
written) and writes it to ``STORE/labels/REGION/export.json``, where ``damnet import-labels``
reads it. Otherwise prints how many are done and writes nothing (exit 0).
``--json`` prints one line ``{"region", "inbox", "labels": URI or null, "server": {"project",
"tasks", "done"}}``. Server and token: ``LABEL_STUDIO_URL``, ``LABEL_STUDIO_API_KEY``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

from components import spec
from components.labels_push import Export, server_or_fail
from components.records import Layout, StepError
from damnet import storage
from damnet.labelstudio import Client, Progress, Server, progress, project_title


@dataclass(frozen=True)
class Pulled:
    progress: Progress
    labels: str | None  #: the export written to the inbox, or None


def pull(layout: Layout, server: Server, partial: bool = False) -> Pulled:
    """Pull the region's annotations when all tasks are done (any, with ``partial``)."""
    from damnet.labels import parse_label_studio_export

    client = Client(server)
    title = project_title(layout.region)
    project = client.find_project(title)
    if project is None:
        raise StepError(f"{server.url}: no Label Studio project {title!r}; push the tasks first: "
                        f"damnet labels-push --region {layout.region}")
    export = Export.of(layout)
    pid = int(project["id"])
    done = progress(pid, client.tasks(pid), export.key)
    if done.tasks == 0:
        raise StepError(f"{server.url}/projects/{pid}: no task of the region's current export ({export.key}); "
                        f"push them: damnet labels-push --region {layout.region}")
    if not done.done or not (done.complete or partial):
        return Pulled(done, None)
    blob = client.export(pid, done.task_ids)
    source = f"{server.url}/projects/{pid} (export)"
    parse_label_studio_export(blob, source, export.tasks)  # refuses a bad export before it lands
    target = storage.join(layout.inbox, "export.json")
    storage.storage_for(target).put_bytes(target, blob)
    return Pulled(done, target)


def report(layout: Layout, server: Server, pulled: Pulled, as_json: bool) -> None:
    p = pulled.progress
    if as_json:
        print(json.dumps({"region": layout.region, "inbox": layout.inbox, "labels": pulled.labels,
                          "server": {"url": server.url, **p.as_dict()}}))
    elif pulled.labels:
        print(f"[{layout.region}] pulled {p.done} annotated task(s) of {p.tasks} from {server.url}/projects/"
              f"{p.project} to {pulled.labels}; next: damnet import-labels --region {layout.region}")
    else:
        print(f"[{layout.region}] {p.done} of {p.tasks} task(s) annotated in {server.url}/projects/{p.project}; "
              "nothing pulled yet" + (" (--partial pulls those)" if p.done else ""))


def run(args: argparse.Namespace) -> None:
    layout = Layout.from_args(args)
    server = server_or_fail()
    report(layout, server, pull(layout, server, partial=args.partial), args.json)


def main(argv: list[str] | None = None) -> int:
    """``damnet labels-pull`` without loading every step's module."""
    return spec.standalone("labels-pull", run, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
