"""One Airflow task per DAM-Net step, in either execution mode, from one definition.

``step_task("adapt", [...arguments...], gpu=True)`` gives

* in ``local`` mode a :class:`DamnetStep`: runs ``python -m components.cli adapt ...`` on
  the worker (no shell; arguments are a templated list), streams its output to the task
  log, and fails the task with the command's ``error:`` line;
* in ``kubernetes`` mode a ``KubernetesPodOperator`` running ``damnet adapt ...`` in the
  project image, with GPU requests/limits, tolerations and node selector for GPU steps,
  CPU/memory for the rest, a non-root, read-only security context, and S3 credentials and
  settings from a Kubernetes secret and config map (never from the DAG).

Every step gets ``--run-group {{ run_id }}`` so its MLflow run lands under this DAG run's
region run, and in local mode ``--store`` (pods read ``DAMNET_STORE`` from the config map).

A step that returns a result (``returns_json=True``, e.g. ``damnet scan``) gets ``--json``
and its task returns the JSON the command prints as its last line: downstream tasks map
over it. Such a step is light and runs on the worker in both modes, like the labels sensor's
check (a pod's XCom would need ``pods/exec``, which the pod launcher's Role leaves out).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from damnet_ops.settings import Settings
from damnet_ops.workflow import EXIT_CODES, GPU_STEPS, SPEC

_CPU, _GPU = SPEC["resources"]["cpu"], SPEC["resources"]["gpu"]
#: (requests, limits) per kind of step in kubernetes mode
CPU_RESOURCES = (_CPU[0], _CPU[1])
GPU_RESOURCES = ({**_GPU[0], "nvidia.com/gpu": "1"}, {**_GPU[1], "nvidia.com/gpu": "1"})
RUN_AS = 10001


#: the optional secret with LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY (labels-push, labels-pull);
#: CPU pods only, and without it the pods start as before (labels by the file drop)
LABEL_STUDIO = "damnet-label-studio"


class StepFailed(Exception):
    """A step command failed unexpectedly (its error line is the message); retried."""


#: exit status of a step whose verdict is "no" (the promotion gate refused the candidate)
REJECTED = EXIT_CODES["rejected"]
#: exit status of a step refusing its input: retrying cannot help
BAD_INPUT = EXIT_CODES["bad_input"]


class DamnetStep(BaseOperator):
    """Run one ``damnet`` step command on the worker (local execution mode)."""

    template_fields = ("arguments",)
    ui_color = "#e8f1fb"

    def __init__(self, *, step: str, arguments: list[str], returns_json: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.step = step
        self.arguments = arguments
        self.returns_json = returns_json

    def execute(self, context) -> Any:
        """Runs the step; returns its name, or with ``returns_json`` the JSON it printed last."""
        cmd = [sys.executable, "-m", "components.cli", self.step, *map(str, self.arguments)]
        self.log.info("running: damnet %s %s", self.step, " ".join(map(str, self.arguments)))
        # DAMNET_THREADS in the worker's environment (make airflow: CPUs / parallelism) gives each
        # step its share of the CPUs.
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        # Own process group: on_kill stops the step and whatever it started (torchrun, GDAL).
        proc = self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                             env=env, start_new_session=True)
        last_error, result = "", ""
        echo = os.environ.get("DAMNET_ECHO_STEPS") == "1"  # the demo shows step output on its console
        if echo:
            print(f"  > {self.dag_id}.{self.task_id}: damnet {self.step}", flush=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            self.log.info("%s", line)
            if echo and not line.startswith(("INFO ", "WARNING ", "/")):
                print(f"    {line}", flush=True)
            if line.startswith("error: "):
                last_error = line[len("error: "):]
            elif line.startswith("{"):
                result = line
        code = proc.wait()
        message = f"damnet {self.step} exited with {code}: {last_error or 'see the log above'}"
        if code == REJECTED:  # a verdict: what depends on it is skipped, the run goes on
            raise AirflowSkipException(message)
        if code == BAD_INPUT:  # the input is wrong: no retry
            raise AirflowFailException(message)
        if code != 0:
            raise StepFailed(message)
        if not self.returns_json:
            return self.step
        try:
            return json.loads(result)
        except ValueError:
            raise StepFailed(f"damnet {self.step} printed no JSON result line: {result!r}") from None

    def on_kill(self) -> None:
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def _k8s_kwargs(settings: Settings, step: str, gpu: bool) -> dict:
    """KubernetesPodOperator arguments of a step pod, all but ``task_id`` and ``arguments``."""
    from kubernetes.client import models as k8s

    requests, limits = GPU_RESOURCES if gpu else CPU_RESOURCES
    extra = {}
    if gpu:
        key, value = settings.gpu_node_selector
        extra["node_selector"] = {key: value}
        extra["tolerations"] = [k8s.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")]
    return dict(
        name=f"damnet-{step}",
        namespace=settings.namespace,
        image=settings.gpu_image if gpu else settings.image,
        cmds=["damnet"],
        container_resources=k8s.V1ResourceRequirements(requests=requests, limits=limits),
        service_account_name=settings.service_account,
        env_from=[k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=settings.secret)),
                  k8s.V1EnvFromSource(config_map_ref=k8s.V1ConfigMapEnvSource(name=settings.config_map)),
                  # optional: the labels steps' Label Studio server, CPU pods only
                  *([] if gpu else [k8s.V1EnvFromSource(
                      secret_ref=k8s.V1SecretEnvSource(name=LABEL_STUDIO, optional=True))])],
        security_context=k8s.V1PodSecurityContext(
            run_as_non_root=True, run_as_user=RUN_AS, run_as_group=RUN_AS, fs_group=RUN_AS,
            seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault")),
        container_security_context=k8s.V1SecurityContext(
            allow_privilege_escalation=False, read_only_root_filesystem=True, run_as_non_root=True,
            capabilities=k8s.V1Capabilities(drop=["ALL"])),
        # The root filesystem is read-only: home and caches (matplotlib, torch) live in /tmp.
        env_vars=[k8s.V1EnvVar(name="HOME", value="/tmp"),  # noqa: S108 - the pod's scratch volume
                  k8s.V1EnvVar(name="MPLCONFIGDIR", value="/tmp/matplotlib"),  # noqa: S108
                  # torch threads: the pod's CPU limit (the steps also read the cgroup quota)
                  k8s.V1EnvVar(name="DAMNET_THREADS", value_from=k8s.V1EnvVarSource(
                      resource_field_ref=k8s.V1ResourceFieldSelector(resource="limits.cpu", divisor="1")))],
        volumes=[k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource())],
        volume_mounts=[k8s.V1VolumeMount(name="tmp", mount_path="/tmp")],  # noqa: S108 - pod scratch
        get_logs=True,
        on_finish_action="delete_pod",
        labels={"app.kubernetes.io/part-of": "damnet", "damnet/step": step},
        **extra,
    )


def full_arguments(settings: Settings, step: str, arguments: list[str], run_id: str = "{{ run_id }}") -> list[str]:
    """What the task passes: ``[step,] [--store S,] --run-group RUN_ID, *arguments`` for the mode."""
    if settings.execution == "kubernetes":  # the pod's DAMNET_STORE comes from the config map
        return [step, "--run-group", run_id, *arguments]
    return ["--store", settings.store, "--run-group", run_id, *arguments]


def step_task(settings: Settings, step: str, arguments: list[str], gpu: bool | None = None,
              task_id: str | None = None, returns_json: bool = False, **kwargs):
    """The task that runs ``damnet <step> --store STORE --run-group RUN_ID <arguments>``;
    with ``returns_json``, its XCom is the step's JSON result (see the module's doc)."""
    task_id = task_id or step.replace("-", "_")
    gpu = step in GPU_STEPS if gpu is None else gpu
    if returns_json:  # on the worker in both modes (see the module's doc)
        args = ["--store", settings.store, "--run-group", "{{ run_id }}", *arguments, "--json"]
        return DamnetStep(task_id=task_id, step=step, arguments=args, returns_json=True, **kwargs)
    args = full_arguments(settings, step, arguments)
    if settings.execution == "kubernetes":
        from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

        return KubernetesPodOperator(task_id=task_id, arguments=args, **_k8s_kwargs(settings, step, gpu), **kwargs)
    return DamnetStep(task_id=task_id, step=step, arguments=args, **kwargs)


def mapped_step_task(settings: Settings, step: str, arguments, gpu: bool = False, task_id: str | None = None):
    """One task instance per element of ``arguments`` (an XComArg of lists made by
    :func:`full_arguments`), e.g. a step over every region the nightly scan found."""
    task_id = task_id or step.replace("-", "_")
    if settings.execution == "kubernetes":
        from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

        return KubernetesPodOperator.partial(task_id=task_id, **_k8s_kwargs(settings, step, gpu)).expand(
            arguments=arguments)
    return DamnetStep.partial(task_id=task_id, step=step).expand(arguments=arguments)
