"""A small client of Label Studio's REST API, and the plan of a region's round trip through it.

The exported tasks of a region (``tasks.json``, :mod:`damnet.labels.export`) go to one
Label Studio project per region, titled ``damnet-REGION`` (:func:`project_title`), whose
labeling config is :func:`damnet.labels.labeling_config`. Each task on the server carries the
key of the export it came from in ``data.damnet_export``: a push adds the tasks of the current
export the project lacks (:func:`plan_push`; uploaded images go to a companion project,
:func:`images_title`), deletes unlabelled tasks of earlier exports and
keeps labelled ones (never pulled again); :func:`progress` counts the current export's tasks
that have an annotation; a pull exports exactly those tasks.

Authentication (:class:`Client`): ``LABEL_STUDIO_API_KEY`` is either a personal access token
(a JWT, Label Studio >= 1.18: exchanged at ``/api/token/refresh/`` for short-lived access
tokens, renewed when the server answers 401) or a legacy token (``Authorization: Token``,
off by default for new organisations since 1.18). Server errors raise
:class:`LabelStudioError` (exit 2: a wrong URL, token or request) or
:class:`LabelStudioUnavailable` (exit 75: the server cannot be reached or answers 5xx; a
retry may help). Plain ``urllib``: no SDK (label-studio-sdk pins an older numpy).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from damnet.errors import DamnetError, Unavailable

URL_ENV = "LABEL_STUDIO_URL"
KEY_ENV = "LABEL_STUDIO_API_KEY"  # noqa: S105 - the name of an environment variable
#: task data field holding the export-labels key a task came from
EXPORT_FIELD = "damnet_export"
PAGE_SIZE = 100
UPLOAD_BATCH = 40


class LabelStudioError(DamnetError):
    """Label Studio refused a request (wrong URL, token, project or data); names the request."""


class LabelStudioUnavailable(LabelStudioError, Unavailable):
    """Label Studio cannot be reached, or failed on its side (5xx); a later retry may work."""


@dataclass(frozen=True)
class Server:
    """Where the Label Studio server is and the token to use (never printed)."""

    url: str
    api_key: str = field(repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Server | None:
        """The server of ``LABEL_STUDIO_URL`` / ``LABEL_STUDIO_API_KEY``; None when no URL is set.

        Raises LabelStudioError when only one of them is set, or the URL is not http(s).
        """
        env = os.environ if env is None else env
        url, key = env.get(URL_ENV, "").strip(), env.get(KEY_ENV, "").strip()
        if not url and not key:
            return None
        if not url or not key:
            missing = URL_ENV if not url else KEY_ENV
            raise LabelStudioError(f"{missing} is not set (both {URL_ENV} and {KEY_ENV} are needed to use "
                                   "a Label Studio server; neither: the file drop)")
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise LabelStudioError(f"{URL_ENV}={url!r} is not an http(s) URL")
        return cls(url.rstrip("/"), key)


def project_title(region: str) -> str:
    """The title of a region's Label Studio project (3..50 characters for region names)."""
    return f"damnet-{region}"


def images_title(region: str) -> str:
    """The title of the project that holds the uploaded images of a region's tasks (no tasks).

    Label Studio accepts uploaded images only into a project whose tasks have one data key;
    ours have two (pre and post), so the files go to this companion project and the tasks
    link to them (any member of the organisation may see uploads)."""
    return f"damnet-im-{region}"


#: labeling config of the images project: one image per task, so uploads are accepted
IMAGES_CONFIG = '<View><Image name="image" value="$image"/></View>'


def is_jwt(token: str) -> bool:
    """A personal access token (JWT: three base64url parts) rather than a legacy token."""
    parts = token.split(".")
    return len(parts) == 3 and all(parts)


def _multipart(files: Mapping[str, bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    chunks = []
    for name, blob in files.items():
        chunks.append((f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; "
                       f"filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode())
        chunks.append(blob)
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def _detail(body: bytes) -> str:
    """The useful part of an error answer, on one line."""
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return " ".join(text.split())[:300] or "no detail"
    if isinstance(data, dict):
        parts = [str(data.get(k)) for k in ("detail", "validation_errors") if data.get(k)]
        text = "; ".join(parts) if parts else json.dumps(data)
    else:
        text = json.dumps(data)
    return " ".join(text.split())[:500]


class Client:
    """Label Studio's REST API, the calls the round trip needs (see the module docstring)."""

    def __init__(self, server: Server, timeout: float = 120.0) -> None:
        self.server = server
        self.timeout = timeout
        self._access: str | None = None

    # ------------------------------------------------------------------ HTTP and tokens
    def _send(self, method: str, url: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, bytes]:
        req = urllib.request.Request(url, data=body, method=method, headers=headers)  # noqa: S310 - http(s) only
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310 - checked in Server
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise LabelStudioUnavailable(f"{method} {url}: cannot reach Label Studio at "
                                         f"{self.server.url}: {reason}") from None

    def _auth(self, renew: bool = False) -> str:
        key = self.server.api_key
        if not is_jwt(key):
            return f"Token {key}"
        if self._access is None or renew:
            url = f"{self.server.url}/api/token/refresh/"
            status, body = self._send("POST", url, json.dumps({"refresh": key}).encode(),
                                      {"Content-Type": "application/json", "Accept": "application/json"})
            if status != 200:
                raise LabelStudioError(f"POST {url}: HTTP {status}: {KEY_ENV} (a personal access token) "
                                       f"was refused: {_detail(body)}")
            self._access = json.loads(body)["access"]
        return f"Bearer {self._access}"

    def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                payload: Any = None, files: Mapping[str, bytes] | None = None) -> Any:
        """``method`` on ``path`` (from ``/api/``); the JSON answer (None when empty).

        ``params`` go in the query string (sequences repeat the key), ``payload`` as JSON,
        ``files`` as a multipart form. Raises LabelStudioError / LabelStudioUnavailable.
        """
        url = f"{self.server.url}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params, doseq=True)
        headers = {"Accept": "application/json"}
        body = None
        if files is not None:
            body, headers["Content-Type"] = _multipart(files)
        elif payload is not None:
            body, headers["Content-Type"] = json.dumps(payload).encode(), "application/json"
        for attempt in range(2):
            headers["Authorization"] = self._auth(renew=attempt > 0)
            status, answer = self._send(method, url, body, headers)
            if status != 401 or not is_jwt(self.server.api_key):
                break
        if status >= 500:
            raise LabelStudioUnavailable(f"{method} {url}: HTTP {status}: {_detail(answer)}")
        if status >= 400:
            hint = f" (check {KEY_ENV})" if status in (401, 403) else ""
            raise LabelStudioError(f"{method} {url}: HTTP {status}{hint}: {_detail(answer)}")
        if not answer.strip():
            return None
        try:
            return json.loads(answer)
        except ValueError:
            raise LabelStudioError(f"{method} {url}: the answer is not JSON (is {URL_ENV} Label "
                                   f"Studio's address?): {_detail(answer)}") from None

    # ------------------------------------------------------------------ projects
    def find_project(self, title: str) -> dict | None:
        """The project titled exactly ``title`` (the oldest if several), or None."""
        found: list[dict] = []
        page = 1
        while True:
            data = self.request("GET", "/api/projects/", params={"title": title, "page": page,
                                                                  "page_size": PAGE_SIZE})
            found += [p for p in data.get("results", []) if p.get("title") == title]
            if not data.get("next"):
                break
            page += 1
        return min(found, key=lambda p: p["id"]) if found else None

    def ensure_project(self, title: str, label_config: str, description: str) -> tuple[dict, str]:
        """The project titled ``title`` with ``label_config``: (project, "created" | "updated" | "current")."""
        project = self.find_project(title)
        if project is None:
            made = self.request("POST", "/api/projects/", payload={
                "title": title, "label_config": label_config, "description": description,
                "maximum_annotations": 1})
            return made, "created"
        if project.get("label_config", "").strip() == label_config.strip():
            return project, "current"
        updated = self.request("PATCH", f"/api/projects/{project['id']}/", payload={"label_config": label_config})
        return updated, "updated"

    # ------------------------------------------------------------------ tasks
    def tasks(self, project_id: int) -> list[dict]:
        """Every task of the project (data, annotation counts), page by page."""
        out: list[dict] = []
        page = 1
        while True:
            data = self.request("GET", "/api/tasks/", params={"project": project_id, "page": page,
                                                              "page_size": PAGE_SIZE, "fields": "all"})
            batch = data.get("tasks", []) if isinstance(data, dict) else []
            out += batch
            if not batch or len(out) >= int(data.get("total", 0)):
                return out
            page += 1

    def import_tasks(self, project_id: int, tasks: list[dict]) -> int:
        """Create ``tasks`` (with their predictions) in the project; how many were created."""
        if not tasks:
            return 0
        data = self.request("POST", f"/api/projects/{project_id}/import", payload=tasks,
                            params={"return_task_ids": "true"})
        if "import" in data:  # Label Studio Enterprise imports in the background
            return self._wait_import(project_id, int(data["import"]))
        return int(data.get("task_count", 0))

    def _wait_import(self, project_id: int, import_id: int, timeout: float = 600.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.request("GET", f"/api/projects/{project_id}/imports/{import_id}/")
            if state.get("status") == "completed":
                return int(state.get("task_count") or 0)
            if state.get("status") == "failed":
                raise LabelStudioError(f"import {import_id} of project {project_id} failed: {state.get('error')}")
            time.sleep(2.0)
        raise LabelStudioUnavailable(f"import {import_id} of project {project_id} did not finish in {timeout:.0f} s")

    def delete_task(self, task_id: int) -> None:
        self.request("DELETE", f"/api/tasks/{task_id}/")

    def upload_files(self, project_id: int, files: Mapping[str, bytes]) -> dict[str, str]:
        """Upload ``{file name: bytes}`` to the project without making tasks of them; returns
        ``{file name: URL}`` (server-relative, e.g. ``/data/upload/3/1a2b3c4d-NAME``)."""
        urls: dict[str, str] = {}
        names = list(files)
        for start in range(0, len(names), UPLOAD_BATCH):
            batch = {n: files[n] for n in names[start:start + UPLOAD_BATCH]}
            data = self.request("POST", f"/api/projects/{project_id}/import", files=batch,
                                params={"commit_to_project": "false"})
            ids = data.get("file_upload_ids") or []
            listed = self.request("GET", f"/api/projects/{project_id}/file-uploads",
                                  params={"ids": json.dumps(ids)})
            for item in listed or []:
                stored = str(item.get("file", ""))
                # Label Studio stores NAME as upload/PROJECT/<8 hex>-NAME
                name = stored.rsplit("/", 1)[-1][9:]
                if name in batch:
                    urls[name] = stored if stored.startswith(("/", "http")) else f"/data/{stored}"
            missing = sorted(set(batch) - set(urls))
            if missing:
                raise LabelStudioError(f"project {project_id}: uploaded {len(batch)} file(s), but Label Studio "
                                       f"lists none for {', '.join(missing[:5])}")
        return urls

    def export(self, project_id: int, task_ids: Sequence[int]) -> bytes:
        """Label Studio's JSON export (tasks with their annotations) of ``task_ids``."""
        url = f"/api/projects/{project_id}/export"
        data = self.request("GET", url, params={"exportType": "JSON", "download_all_tasks": "true",
                                                "ids[]": [str(i) for i in task_ids]})
        if not isinstance(data, list):
            raise LabelStudioError(f"{self.server.url}{url}: expected a list of tasks, got {type(data).__name__}")
        return json.dumps(data, separators=(",", ":")).encode()

    def annotate(self, task_id: int, result: list[dict], lead_time: float = 30.0) -> dict:
        """Submit an annotation of a task (what the labeling UI does on Submit)."""
        return self.request("POST", f"/api/tasks/{task_id}/annotations/",
                            payload={"result": result, "was_cancelled": False, "lead_time": lead_time})

    def connect_s3(self, project_id: int, bucket: str, prefix: str, *, endpoint: str | None = None,
                   region: str | None = None, credentials: tuple[str, str] | None = None) -> tuple[int, bool]:
        """An S3 source storage of the project that lets Label Studio serve ``s3://bucket/...``
        URLs in task data (presigned links; never synced, so it makes no tasks itself).
        Returns (storage id, created). With ``credentials`` None, Label Studio uses its own."""
        existing = self.request("GET", "/api/storages/s3", params={"project": project_id}) or []
        for item in existing:
            if item.get("bucket") == bucket and (item.get("prefix") or "") == prefix:
                return int(item["id"]), False
        body: dict[str, Any] = {"project": project_id, "title": f"damnet store {bucket}", "bucket": bucket,
                                "prefix": prefix, "presign": True, "presign_ttl": 60, "use_blob_urls": False,
                                "recursive_scan": True, "regex_filter": r"^$"}
        if endpoint:
            body["s3_endpoint"] = endpoint
        if region:
            body["region_name"] = region
        if credentials:
            body["aws_access_key_id"], body["aws_secret_access_key"] = credentials
        made = self.request("POST", "/api/storages/s3", payload=body)
        return int(made["id"]), True


# ---------------------------------------------------------------------- the round trip's plan

def export_key(task: Mapping) -> str | None:
    data = task.get("data")
    return data.get(EXPORT_FIELD) if isinstance(data, dict) else None


def is_done(task: Mapping) -> bool:
    """A server task with at least one annotation that was not cancelled."""
    return int(task.get("total_annotations") or 0) > 0


@dataclass
class PushPlan:
    """What a push does: tasks to create, stale tasks to delete, stale labelled tasks kept."""

    add: list[dict]
    present: int
    delete: list[int]
    kept: list[int]


def plan_push(local: Iterable[Mapping], server: Iterable[Mapping], key: str) -> PushPlan:
    """Compare the exported tasks (``tasks.json`` of export ``key``) with the project's tasks.

    Tasks of export ``key`` already on the server (by ``data.tile_id``) are left as they
    are; the others are to be added. Tasks of other exports are deleted when nobody has
    annotated them, kept (and never pulled) otherwise.
    """
    server = list(server)
    current = {t["data"].get("tile_id") for t in server if export_key(t) == key}
    add = [dict(t) for t in local if t["data"]["tile_id"] not in current]
    stale = [t for t in server if export_key(t) != key]
    return PushPlan(add=add, present=len(current), delete=[int(t["id"]) for t in stale if not is_done(t)],
                    kept=[int(t["id"]) for t in stale if is_done(t)])


def server_task(task: Mapping, key: str, images: Mapping[str, str]) -> dict:
    """A ``tasks.json`` task as the server gets it: no id (the server numbers its own tasks),
    image URLs from ``images`` (``{"pre": url, "post": url}``), the export key in its data."""
    data = {**task["data"], **images, EXPORT_FIELD: key}
    return {"data": data, "predictions": list(task.get("predictions") or [])}


@dataclass(frozen=True)
class Progress:
    """How far the labelling of the current export is on the server."""

    project: int | None
    tasks: int
    done: int
    task_ids: tuple[int, ...] = ()

    @property
    def complete(self) -> bool:
        return self.tasks > 0 and self.done == self.tasks

    def as_dict(self) -> dict[str, Any]:
        return {"project": self.project, "tasks": self.tasks, "done": self.done}


def progress(project: int | None, server: Iterable[Mapping], key: str) -> Progress:
    """The current export's tasks on the server, and how many have an annotation."""
    mine = [t for t in server if export_key(t) == key]
    done = tuple(sorted(int(t["id"]) for t in mine if is_done(t)))
    return Progress(project, len(mine), len(done), done)
