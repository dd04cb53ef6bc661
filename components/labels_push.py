"""Push a region's exported labeling tasks to a Label Studio server (instead of carrying tasks.json).

Needs ``LABEL_STUDIO_URL`` and ``LABEL_STUDIO_API_KEY`` (a personal access token, or a legacy
token) in the environment; in Kubernetes they come from the optional secret
``damnet-label-studio``. Creates the region's project ``damnet-REGION`` with our labeling config
(or updates the config), and adds the tasks of the region's latest export-labels run that the
project lacks, with the model's pre-annotations. Idempotent: a second push adds nothing.
Unlabelled tasks of an earlier export are deleted; labelled ones are kept (and never pulled).

Images: ``--images upload`` sends the PNG quicklooks through the API (any store; into a companion
project ``damnet-im-REGION``, as Label Studio takes uploads only for one-image tasks);
``--images s3`` leaves ``s3://`` URLs in the tasks and connects an S3 source storage to the
project, so Label Studio serves them from the store (presigned; Label Studio's own AWS
credentials unless ``--s3-credentials store``); ``as-exported`` keeps the URLs export-labels
wrote (``--image-url-prefix``, e.g. a web server). ``auto``: s3 for an s3:// store, else upload.
Then ``damnet labels-pull`` brings the annotations back.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass

from components import spec
from components.records import Layout, Record, StepError, read_json, upstream
from damnet import storage
from damnet.labelstudio import IMAGES_CONFIG, Client, Server, images_title, plan_push, project_title, server_task


def server_or_fail() -> Server:
    server = Server.from_env()
    if server is None:
        raise StepError("no Label Studio server configured: set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY "
                        "(or return the labels by the file drop: damnet labels-status names the folder)")
    return server


@dataclass(frozen=True)
class Export:
    """The region's current export-labels run: its key, folder and tasks."""

    region: str
    key: str
    folder: str
    tasks: list[dict]

    @classmethod
    def of(cls, layout: Layout) -> Export:
        record: Record = upstream(layout, "export-labels")
        return cls(layout.region, record["key"], record["outputs"]["export"], read_json(record["outputs"]["tasks"]))


def _images_mode(choice: str, folder: str) -> str:
    if choice == "auto":
        return "s3" if storage.is_s3(folder) else "upload"
    if choice == "s3" and not storage.is_s3(folder):
        raise StepError(f"--images s3: the export is not in S3 ({folder}); use --images upload")
    return choice


def _image_paths(task: dict) -> dict[str, str]:
    tid = task["data"]["tile_id"]
    return {"pre": f"images/{tid}_pre.png", "post": f"images/{tid}_post.png"}


def _image_urls(client: Client, project: int, export: Export, tasks: list[dict], mode: str,
                args: argparse.Namespace) -> list[dict[str, str]]:
    """{"pre": url, "post": url} of each task, as Label Studio will reach the images."""
    if mode == "as-exported":
        return [{"pre": t["data"]["pre"], "post": t["data"]["post"]} for t in tasks]
    if mode == "s3":
        bucket, key = storage.split_s3(export.folder)
        creds = None
        if args.s3_credentials == "store":
            ident, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
            if not (ident and secret):
                raise StepError("--s3-credentials store: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set")
            creds = (ident, secret)
        _, made = client.connect_s3(project, bucket, key.rstrip("/") + "/", endpoint=args.s3_endpoint or None,
                                    region=os.environ.get("AWS_DEFAULT_REGION"), credentials=creds)
        if made:
            print(f"  connected S3 source storage s3://{bucket}/{key} to project {project}")
        return [{k: storage.join(export.folder, rel) for k, rel in _image_paths(t).items()} for t in tasks]
    files = {}
    for t in tasks:
        for rel in _image_paths(t).values():
            uri = storage.join(export.folder, rel)
            files[rel.rsplit("/", 1)[-1]] = storage.storage_for(uri).get_bytes(uri)
    images, _ = client.ensure_project(images_title(export.region), IMAGES_CONFIG,
                                      f"Uploaded images of the tasks of project {project_title(export.region)} "
                                      "(damnet labels-push); no tasks to label here.")
    urls = client.upload_files(int(images["id"]), files)
    return [{k: urls[rel.rsplit("/", 1)[-1]] for k, rel in _image_paths(t).items()} for t in tasks]


def push(layout: Layout, server: Server, args: argparse.Namespace) -> dict:
    """Push the region's current export (see the module docstring); a summary for --json."""
    from damnet.labels import labeling_config

    export = Export.of(layout)
    client = Client(server)
    description = (f"DAM-Net building change labels of region {layout.region} (export {export.key}). "
                   f"Managed by `damnet labels-push`; pulled by `damnet labels-pull`.")
    project, state = client.ensure_project(project_title(layout.region), labeling_config(), description)
    pid = int(project["id"])
    plan = plan_push(export.tasks, client.tasks(pid), export.key)
    for task_id in plan.delete:
        client.delete_task(task_id)
    mode = _images_mode(args.images, export.folder)
    urls = _image_urls(client, pid, export, plan.add, mode, args) if plan.add else []
    added = client.import_tasks(pid, [server_task(t, export.key, u) for t, u in zip(plan.add, urls, strict=True)])
    if added != len(plan.add):
        raise StepError(f"project {pid}: Label Studio created {added} of {len(plan.add)} task(s); push again")
    return {"region": layout.region, "server": server.url, "project": pid,
            "project_url": f"{server.url}/projects/{pid}", "project_state": state, "export": export.key,
            "tasks": len(export.tasks), "added": added,
            "present": plan.present, "deleted": len(plan.delete), "kept": len(plan.kept), "images": mode}


def run(args: argparse.Namespace) -> None:
    layout = Layout.from_args(args)
    summary = push(layout, server_or_fail(), args)
    if args.json:
        print(json.dumps(summary))
        return
    print(f"[{layout.region}] Label Studio project {summary['project_url']} ({summary['project_state']}): "
          f"{summary['added']} task(s) added, {summary['present']} already there, of {summary['tasks']} "
          f"(images: {summary['images']})")
    if summary["deleted"] or summary["kept"]:
        print(f"  earlier export: {summary['deleted']} unlabelled task(s) deleted, {summary['kept']} labelled "
              "task(s) kept (not pulled)")
    print(f"  when labelled: damnet labels-pull --region {layout.region}")


def main(argv: list[str] | None = None) -> int:
    """``damnet labels-push`` without loading every step's module (the labels sensor runs it)."""
    return spec.standalone("labels-push", run, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
