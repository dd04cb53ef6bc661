"""torch threads that fit the machine: CPU affinity, cgroup quotas, and the user's override."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from damnet import threads
from damnet.threads import ThreadsError, available_cpus, cgroup_cpu_limit, choose_threads, parse_cfs, parse_cpu_max

V1 = "12:cpu,cpuacct:/kubepods/pod1/c1\n4:memory:/kubepods/pod1/c1\n0::/\n"


def _files(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.fixture
def torch_threads():
    """Give torch back the thread count it had (tests below change it in this process)."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(("text", "cpus"), [("150000 100000\n", 1.5), ("200000 100000", 2.0),
                                            ("50000 100000", 0.5), ("max 100000\n", None), ("max", None)])
def test_cgroup_v2_cpu_max(text, cpus):
    assert parse_cpu_max(text) == cpus


@pytest.mark.parametrize(("quota", "period", "cpus"), [("250000\n", "100000\n", 2.5), ("-1\n", "100000\n", None),
                                                       ("100000", "100000", 1.0)])
def test_cgroup_v1_quota(quota, period, cpus):
    assert parse_cfs(quota, period) == cpus


@pytest.mark.parametrize("text", ["", "100000", "a b", "0 100000", "100000 0", "1 2 3"])
def test_cpu_max_that_is_not_a_limit_is_refused(text):
    with pytest.raises(ValueError):
        parse_cpu_max(text)


def test_quota_of_a_v2_container_is_its_root_cpu_max_rounded_up(tmp_path):
    root = _files(tmp_path, {"cpu.max": "150000 100000\n"})
    assert cgroup_cpu_limit(root, "0::/\n") == 1.5
    assert available_cpus(root, "0::/\n", affinity=64) == 2  # 1.5 CPUs: 2 threads


def test_v2_quota_of_the_process_cgroup_and_its_parents_the_smallest_wins(tmp_path):
    root = _files(tmp_path, {"kubepods.slice/cpu.max": "300000 100000", "kubepods.slice/pod/c1/cpu.max": "max 100000",
                             "kubepods.slice/pod/cpu.max": "400000 100000", "other/cpu.max": "10000 100000"})
    assert cgroup_cpu_limit(root, "0::/kubepods.slice/pod/c1\n") == 3.0


def test_v1_quota_of_the_cpu_controller(tmp_path):
    root = _files(tmp_path, {"cpu,cpuacct/cpu.cfs_quota_us": "200000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"})
    assert cgroup_cpu_limit(root, V1) == 2.0  # a container: /proc/self/cgroup names the host's path
    nested = _files(tmp_path / "host", {"cpu/kubepods/pod1/c1/cpu.cfs_quota_us": "50000",
                                        "cpu/kubepods/pod1/c1/cpu.cfs_period_us": "100000",
                                        "cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"})
    assert cgroup_cpu_limit(nested, "3:cpu:/kubepods/pod1/c1\n") == 0.5
    assert available_cpus(nested, "3:cpu:/kubepods/pod1/c1\n", affinity=8) == 1  # at least one


def test_no_quota_leaves_the_affinity(tmp_path):
    root = _files(tmp_path, {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000", "cpu.max": "max 100000"})
    assert cgroup_cpu_limit(root, V1) is None
    assert available_cpus(root, V1, affinity=3) == 3
    assert available_cpus(tmp_path / "no-cgroups", "", affinity=5) == 5


def test_a_garbled_cgroup_file_is_ignored_with_a_warning(tmp_path, caplog):
    root = _files(tmp_path, {"cpu.max": "garbage\n"})
    assert cgroup_cpu_limit(root, "0::/\n") is None
    assert "cpu.max" in caplog.text


def test_affinity_is_the_cpus_the_process_may_run_on(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert threads.affinity_cpus() == 3
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # macOS
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert threads.affinity_cpus() == 6


def test_available_cpus_of_this_process_fit_its_affinity():
    assert 1 <= available_cpus() <= threads.affinity_cpus()


def test_flag_wins_over_the_environment_which_wins_over_the_machine(tmp_path):
    root = _files(tmp_path, {"cpu.max": "300000 100000"})
    env = {"DAMNET_THREADS": "2", "OMP_NUM_THREADS": "5"}
    assert choose_threads(1, env, root) == 1
    assert choose_threads(None, env, root) == 2
    assert choose_threads(None, {"OMP_NUM_THREADS": "5"}, root) == 5  # torch's own variable (torchrun sets it)
    machine = min(3, threads.affinity_cpus())
    assert choose_threads(None, {"DAMNET_THREADS": " ", "OMP_NUM_THREADS": "x"}, root) == machine
    assert choose_threads(None, {}, root) == machine


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5", ""])
def test_a_bad_thread_count_is_one_clear_error(value):
    with pytest.raises(ThreadsError, match=f"^DAMNET_THREADS must be a whole number of threads, 1 or more; "
                                           f"got {value!r}$"):
        threads.parse_threads(value, "DAMNET_THREADS")
    if value.strip():
        with pytest.raises(ThreadsError, match="^DAMNET_THREADS must be"):
            choose_threads(None, {"DAMNET_THREADS": value})
    with pytest.raises(ThreadsError, match="^--threads must be"):
        choose_threads(0, {})


def test_configure_sets_torchs_threads(torch_threads, monkeypatch):
    monkeypatch.setenv("DAMNET_THREADS", "1")
    assert threads.configure_threads() == 1 and torch.get_num_threads() == 1
    assert threads.configure_threads(2) == 2 and torch.get_num_threads() == 2
    threads.configure_threads(1)  # a second time: inter-op threads are fixed by now, no error
    assert torch.get_num_threads() == 1


# The command as a user runs it.

def _damnet(*args: str, env: dict[str, str], tmp: Path) -> subprocess.CompletedProcess:
    full = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}", **env}
    for name in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY"):  # what damnet chooses, not what pytest runs with
        full.pop(name, None)
    return subprocess.run([sys.executable, "-m", "components.cli", *args], capture_output=True, text=True,
                          cwd=tmp, timeout=300, env=full)


def _synth(tmp: Path) -> list[str]:
    return ["synth", "--style", "source", "--out", str(tmp / "region"), "--scenes", "1", "--size", "64"]


def test_damnet_threads_flag_sets_torchs_threads_in_the_step(torch_threads, tmp_path, monkeypatch):
    from components.cli import main

    monkeypatch.delenv("DAMNET_THREADS", raising=False)
    torch.set_num_threads(2)
    assert main(["--threads", "1", *_synth(tmp_path)]) == 0
    assert torch.get_num_threads() == 1
    monkeypatch.setenv("DAMNET_THREADS", "2")
    assert main(["--threads", "1", *_synth(tmp_path)]) == 0
    assert torch.get_num_threads() == 1  # the flag wins over the environment


def test_damnet_threads_from_the_environment_in_a_new_process(tmp_path):
    result = _damnet("-v", *_synth(tmp_path), env={"DAMNET_THREADS": "1"}, tmp=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "torch threads: 1 intra-op" in result.stderr
    result = _damnet("-v", "--threads", "2", *_synth(tmp_path), env={"DAMNET_THREADS": "1"}, tmp=tmp_path)
    assert "torch threads: 2 intra-op" in result.stderr


def test_damnet_bad_thread_counts_are_one_error_line(tmp_path):
    result = _damnet(*_synth(tmp_path), env={"DAMNET_THREADS": "lots"}, tmp=tmp_path)
    assert result.returncode == 2
    assert result.stderr == "error: DAMNET_THREADS must be a whole number of threads, 1 or more; got 'lots'\n"
    assert not (tmp_path / "region").exists()
    result = _damnet("--threads", "0", *_synth(tmp_path), env={}, tmp=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == ("damnet: error: argument --threads: --threads must be a whole number "
                                              "of threads, 1 or more; got '0'")


def test_step_pods_take_their_threads_from_their_cpu_resources():
    import yaml

    templates = Path(__file__).resolve().parents[1] / "k8s" / "base" / "templates"
    seen = 0
    for path in sorted(templates.glob("*.yaml")):
        for obj in yaml.safe_load_all(path.read_text()):
            specs = ([r["template"]["spec"] for r in obj["spec"]["pytorchReplicaSpecs"].values()]
                     if obj["kind"] == "PyTorchJob" else [obj["spec"]] if obj["kind"] == "Pod" else [])
            for spec in specs:
                c = spec["containers"][0]
                env = {e["name"]: e for e in c["env"]}
                field = env["DAMNET_THREADS"]["valueFrom"]["resourceFieldRef"]["resource"]
                kind, _, resource = field.partition(".")
                # the limit where there is one (limits.cpu of a container without one is the node's)
                assert kind == ("limits" if "cpu" in c["resources"].get("limits", {}) else "requests"), path.name
                assert resource == "cpu" and c["resources"][kind]["cpu"], path.name
                seen += 1
    assert seen == 4  # GPU pod, CPU pod, PyTorchJob master and worker


def test_damnet_lets_idle_torch_threads_sleep_not_spin(tmp_path):
    result = _damnet(*_synth(tmp_path), env={"OMP_DISPLAY_ENV": "VERBOSE"}, tmp=tmp_path)
    assert result.returncode == 0, result.stderr
    shown = result.stdout + result.stderr  # OpenMP's own report of its settings (GNU's: on stderr)
    if "OMP_WAIT_POLICY" not in shown:
        pytest.skip("this torch's OpenMP does not report its settings")
    assert "OMP_WAIT_POLICY = 'PASSIVE'" in shown
    if "GOMP_SPINCOUNT" in shown:  # GNU OpenMP: PASSIVE and unset both read 'PASSIVE' above
        assert "GOMP_SPINCOUNT = '0'" in shown
