"""The Label Studio round trip: push a region's tasks, annotate through the API, pull, import.

The fast tests pin the client's behaviour on a loopback stand-in (token renewal, errors a user
can act on, the push plan). The slow one runs a real ``label-studio==1.23.2`` (its own venv,
``.venv-labelstudio``, made by ``make test-slow``) on 127.0.0.1 with SQLite in a temp dir: a
scripted annotator submits brush RLE annotations as a person would, the fine-tune DAG's labels
check pulls them, and import-labels turns them into label tiles equal to the ground truth.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path

import numpy as np
import pytest
from conftest import exported_region

from components.cli import main
from damnet.labelstudio import (
    EXPORT_FIELD,
    Client,
    LabelStudioError,
    LabelStudioUnavailable,
    Server,
    plan_push,
    progress,
    server_task,
)

ROOT = Path(__file__).resolve().parents[1]
LS_BIN = ROOT / ".venv-labelstudio" / "bin" / "label-studio"


def _jwt(payload: dict) -> str:
    part = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")
    return f"eyJhbGciOiJIUzI1NiJ9.{part}.c2lnbmF0dXJl"


# ---------------------------------------------------------------------- fast: settings and plan

def test_server_comes_from_the_environment_and_needs_both_url_and_token():
    assert Server.from_env({}) is None  # the file drop
    s = Server.from_env({"LABEL_STUDIO_URL": "http://ls.example:8080/", "LABEL_STUDIO_API_KEY": "k"})
    assert s is not None and s.url == "http://ls.example:8080" and "k" not in repr(s)
    with pytest.raises(LabelStudioError, match="LABEL_STUDIO_API_KEY is not set"):
        Server.from_env({"LABEL_STUDIO_URL": "http://ls.example"})
    with pytest.raises(LabelStudioError, match="not an http"):
        Server.from_env({"LABEL_STUDIO_URL": "ls.example", "LABEL_STUDIO_API_KEY": "k"})


def _task(tid: str, key: str | None = None, annotations: int = 0, task_id: int = 0) -> dict:
    data = {"tile_id": tid, "pre": f"images/{tid}_pre.png", "post": f"images/{tid}_post.png"}
    if key:
        data[EXPORT_FIELD] = key
    return {"id": task_id, "data": data, "total_annotations": annotations, "predictions": []}


def test_push_plan_adds_what_is_missing_and_clears_unlabelled_tasks_of_earlier_exports():
    local = [_task("a"), _task("b"), _task("c")]
    server = [_task("a", "k2", 0, 1), _task("a", "k1", 1, 2), _task("z", "k1", 0, 3)]
    plan = plan_push(local, server, "k2")
    assert [t["data"]["tile_id"] for t in plan.add] == ["b", "c"] and plan.present == 1
    assert plan.delete == [3] and plan.kept == [2]  # an annotated earlier task is kept, never pulled
    done = progress(7, [*server, _task("b", "k2", 1, 4)], "k2")
    assert (done.tasks, done.done, done.task_ids, done.complete) == (2, 1, (4,), False)
    sent = server_task(_task("b"), "k2", {"pre": "/data/upload/7/x-b_pre.png", "post": "/p"})
    assert "id" not in sent and sent["data"][EXPORT_FIELD] == "k2" and sent["data"]["pre"].startswith("/data/")


# ---------------------------------------------------------------------- fast: a loopback stand-in

class _StandIn(http.server.BaseHTTPRequestHandler):
    """Answers /api/token/refresh/ and /api/projects/; access tokens die after one use."""

    issued: list[str] = []
    seen: list[str] = []

    def log_message(self, *args) -> None:
        pass

    def _reply(self, status: int, body: dict) -> None:
        blob = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(blob)))
        self.end_headers()
        self.wfile.write(blob)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        if self.path == "/api/token/refresh/" and body.get("refresh") == self.server.pat:  # type: ignore[attr-defined]
            self.issued.append(f"access-{len(self.issued)}")
            return self._reply(200, {"access": self.issued[-1]})
        self._reply(401, {"detail": "Token is invalid"})

    def do_GET(self) -> None:
        auth = self.headers.get("Authorization", "")
        self.seen.append(auth)
        if auth != f"Bearer {self.issued[-1] if self.issued else ''}" or self.seen.count(auth) > 1:
            return self._reply(401, {"detail": "Given token not valid for any token type"})
        if self.path.startswith("/api/projects/"):
            return self._reply(200, {"count": 1, "next": None, "results": [
                {"id": 4, "title": "damnet-newtownish"}, {"id": 3, "title": "damnet-newtown"}]})
        self._reply(500, {"detail": "boom"})


@pytest.fixture
def stand_in():
    pat = _jwt({"token_type": "refresh", "user_id": "1"})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StandIn)
    server.pat = pat  # type: ignore[attr-defined]
    _StandIn.issued, _StandIn.seen = [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Server(f"http://127.0.0.1:{server.server_address[1]}", pat)
    server.shutdown()


def test_a_personal_access_token_is_exchanged_and_renewed_when_the_server_says_401(stand_in):
    client = Client(stand_in)
    assert client.find_project("damnet-newtown")["id"] == 3  # the exact title, not a substring match
    assert client.find_project("damnet-newtown")["id"] == 3  # the first access token expired: renewed
    assert _StandIn.issued == ["access-0", "access-1"]
    with pytest.raises(LabelStudioUnavailable, match="HTTP 500: boom"):
        client.request("GET", "/api/other")
    bad = Client(Server(stand_in.url, _jwt({"token_type": "refresh", "user_id": "2"})))
    with pytest.raises(LabelStudioError, match="personal access token\\) was refused: Token is invalid"):
        bad.find_project("damnet-newtown")


def test_commands_say_what_is_missing_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    assert main(["labels-push", "--store", str(tmp_path), "--region", "newtown"]) == 2
    assert "error: no Label Studio server configured: set LABEL_STUDIO_URL" in capsys.readouterr().err
    # Without a server, --pull is the file drop as before.
    assert main(["labels-status", "--store", str(tmp_path), "--region", "newtown", "--pull", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["labels"] is None
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("LABEL_STUDIO_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "legacy-token")
    from components.labels_status import main as status_main

    assert status_main(["--store", str(tmp_path), "--region", "newtown", "--pull"]) == 75  # retry later
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: GET http://127.0.0.1:") and "cannot reach Label Studio" in err[0]


# ---------------------------------------------------------------------- slow: a real server

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _personal_access_token(url: str, email: str, password: str) -> str:
    """Log in as a person does (the login form) and create a personal access token (/api/token/)."""
    jar = CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    opener.open(f"{url}/user/login/", timeout=30).read()
    csrf = next(c.value for c in jar if c.name == "csrftoken")
    form = urllib.parse.urlencode({"csrfmiddlewaretoken": csrf, "email": email, "password": password}).encode()
    login = urllib.request.Request(f"{url}/user/login/", data=form,  # noqa: S310 - the loopback server
                                   headers={"Referer": f"{url}/user/login/"})
    opener.open(login, timeout=30).read()
    csrf = next(c.value for c in jar if c.name == "csrftoken")
    req = urllib.request.Request(f"{url}/api/token/", data=b"", method="POST",  # noqa: S310 - loopback
                                 headers={"X-CSRFToken": csrf, "Referer": f"{url}/"})
    return json.loads(opener.open(req, timeout=30).read())["token"]


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    """A Label Studio 1.23.2 on 127.0.0.1 (SQLite in a temp dir): (url, personal access token)."""
    if not LS_BIN.exists():
        pytest.skip(f"{LS_BIN.relative_to(ROOT)} is missing: `make test-slow` creates it (label-studio has its "
                    "own venv)")
    home = tmp_path_factory.mktemp("label-studio")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    email, password = "ops@example.com", "not-a-real-secret-1"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "DJANGO"))},
           "LABEL_STUDIO_BASE_DATA_DIR": str(home / "data"), "DJANGO_DB": "sqlite", "HOME": str(home),
           "LABEL_STUDIO_USERNAME": email, "LABEL_STUDIO_PASSWORD": password,
           "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true", "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": ""}
    log = (home / "server.log").open("wb")
    proc = subprocess.Popen([str(LS_BIN), "start", "--no-browser", "--internal-host", "127.0.0.1",
                             "--port", str(port)], env=env, cwd=home, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:  # noqa: S310 - loopback
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Label Studio did not start: {(home / 'server.log').read_text()[-3000:]}")
            time.sleep(1)
        yield url, _personal_access_token(url, email, password)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A store whose region 'newtown' went through export-labels (a source model, adapt, select)."""
    import mlflow

    root = tmp_path_factory.mktemp("ls-region")
    with pytest.MonkeyPatch.context() as mp:
        store, r = exported_region(root, mp, root / "truth" / "label")
        yield {"store": store, "args": r, "truth": root / "truth" / "label", "mp": mp}
        mlflow.set_tracking_uri(None)


def _truth(exported) -> dict[str, np.ndarray]:
    from components.records import Layout, read_json, upstream
    from components.simulate_labeler import truth_reader

    layout = Layout(str(exported["store"]), "newtown")
    manifest = read_json(upstream(layout, "ingest")["outputs"]["manifest"])
    tasks = read_json(upstream(layout, "export-labels")["outputs"]["tasks"])
    truth = truth_reader(exported["truth"], {t["tile_id"]: t for t in manifest["tiles"]})
    return {t["data"]["tile_id"]: (truth(t) > 0).astype(np.uint8) for t in tasks}


@pytest.mark.slow
def test_round_trip_through_a_real_label_studio(label_studio, exported, monkeypatch, capsys):
    from damnet.labels import brush_result
    from damnet.tiling import read_label

    monkeypatch.syspath_prepend(str(ROOT / "dags"))
    from damnet_ops.labels import labels_present, push_tasks

    url, pat = label_studio
    monkeypatch.setenv("LABEL_STUDIO_URL", url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", pat)
    a, store = exported["args"], exported["store"]
    truth = _truth(exported)

    # Push: the project with our config, one task per exported tile, pre-annotations, images uploaded.
    assert main(["labels-push", *a, "--json"]) == 0
    pushed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (pushed["project_state"], pushed["added"], pushed["images"]) == ("created", len(truth), "upload")
    client = Client(Server(url, pat))
    tasks = client.tasks(pushed["project"])
    assert sorted(t["data"]["tile_id"] for t in tasks) == sorted(truth)
    first = tasks[0]
    assert first["predictions"] and first["predictions"][0]["result"][0]["type"] == "brushlabels"
    req = urllib.request.Request(url + first["data"]["pre"],  # noqa: S310 - the loopback server
                                 headers={"Authorization": client._auth()})
    export_dir = Path(json.loads((store / "regions/newtown/steps/export-labels.json").read_text())
                      ["outputs"]["export"])
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - the labeler's browser gets the PNG
        assert resp.read() == (export_dir / "images" / f"{first['data']['tile_id']}_pre.png").read_bytes()
    # A second push (the sensor pushes at every start) adds nothing.
    assert f"0 task(s) added, {len(truth)} already there" in push_tasks(str(store), "newtown")

    # Nothing done yet: the DAG's check says so and the inbox stays empty.
    assert labels_present(str(store), "newtown") is None
    assert main(["labels-pull", *a]) == 0
    assert f"0 of {len(truth)} task(s) annotated" in capsys.readouterr().out

    # A scripted annotator submits what a person would: one brush region, or nothing on no change.
    def annotate(task: dict) -> None:
        mask = truth[task["data"]["tile_id"]]
        client.annotate(task["id"], [brush_result(mask, result_id=f"r{task['id']}")] if mask.any() else [])

    annotate(tasks[0])
    assert labels_present(str(store), "newtown") is None  # 1 of 6: still waiting
    assert main(["labels-pull", *a, "--json"]) == 0
    status = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert status["labels"] is None and status["server"]["done"] == 1
    for task in tasks[1:]:
        annotate(task)
    found = labels_present(str(store), "newtown")  # all done: pulled into the inbox
    assert found == str(store / "labels" / "newtown" / "export.json")
    pulled = json.loads(Path(found).read_text())
    assert {t["data"]["tile_id"] for t in pulled} == set(truth)

    # import-labels reads what was pulled: label tiles equal to what the annotator drew.
    assert main(["import-labels", *a]) == 0
    rec = json.loads((store / "regions/newtown/steps/import-labels.json").read_text())
    table = json.loads(Path(rec["outputs"]["labels"]).read_text())
    assert set(table) == set(truth)
    assert any(truth[t].any() for t in truth), "the fixture should have change somewhere"
    for tid, entry in table.items():
        np.testing.assert_array_equal(read_label(entry["uri"]), truth[tid])


def test_pods_get_the_server_from_an_optional_secret(monkeypatch):
    """CPU step pods read LABEL_STUDIO_URL/API_KEY from the secret damnet-label-studio, and still
    start without it (optional); GPU pods do not get it."""
    import yaml

    monkeypatch.syspath_prepend(str(ROOT / "dags"))
    from damnet_ops.settings import Settings
    from damnet_ops.steps import _k8s_kwargs

    settings = Settings("kubernetes", "s3://b/store", "img", "img-cuda", "damnet", ("k", "v"))
    secret = [e for e in _k8s_kwargs(settings, "labels-push", gpu=False)["env_from"]
              if e.secret_ref and e.secret_ref.name == "damnet-label-studio"]
    assert len(secret) == 1 and secret[0].secret_ref.optional is True
    assert not [e for e in _k8s_kwargs(settings, "adapt", gpu=True)["env_from"]
                if e.secret_ref and e.secret_ref.name == "damnet-label-studio"]
    pod = yaml.safe_load((ROOT / "k8s/base/templates/cpu-step-pod.yaml").read_text())
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    for name in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY"):
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "damnet-label-studio", "key": name,
                                                          "optional": True}
