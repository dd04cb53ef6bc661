"""The ``damnet`` command: one sub-command per pipeline step.

Errors in the user's input and faults of the infrastructure it names (``DamnetError``) print
one ``error:`` line and exit with status 2 (a store path that cannot be used, credentials, a
missing bucket, a device that is not there, ...); a service that does not answer (the S3
endpoint, the MLflow server: ``damnet.errors.Unavailable``) exits with 75, which Airflow
retries; a candidate the promotion gate refuses exits with 3 (a verdict, not a failure); Ctrl-C
prints ``error: interrupted`` and exits with 130, SIGTERM (Kubernetes stopping a pod, Airflow
stopping a task) ``error: terminated`` and 143, each with the step's lock released and its
record untouched; anything else is a bug and keeps its traceback. docs/pipeline.md, "Errors".
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import signal
import sys
import threading
import warnings

from components import spec, tracking
from damnet import __version__
from damnet.errors import DamnetError, StorageError, redact_secrets
from damnet.imagery.raster import bound_gdal_cache
from damnet.storage import is_s3, local_path
from damnet.threads import ENV_VAR, ThreadsError, configure_threads, parse_threads

#: sub-command -> module in this package
STEPS = {
    "synth": "components.synth",
    "ingest": "components.ingest",
    "validate": "components.validate",
    "train": "components.train",
    "pretrain": "components.pretrain",
    "adapt": "components.adapt",
    "select": "components.select_tiles",
    "export-labels": "components.export_labels",
    "simulate-labeler": "components.simulate_labeler",
    "import-labels": "components.import_labels",
    "finetune": "components.finetune",
    "evaluate": "components.evaluate",
    "promote": "components.promote",
    "predict": "components.predict",
    "report": "components.report",
    "rescore": "components.rescore",
    "scan": "components.scan",
    "labels-status": "components.labels_status",
    "labels-push": "components.labels_push",
    "labels-pull": "components.labels_pull",
    "demo": "components.demo",
}

#: Warnings of the libraries underneath that tell a damnet user nothing (``damnet -v`` shows them).
QUIET_WARNINGS = (
    (".*Add type hints to the .predict. method", UserWarning),  # MLflow: our pyfunc takes any dict on purpose
    ("GitWildMatchPattern", DeprecationWarning),  # Airflow 3.3's DAG-file discovery (pathspec)
    ("Using `httpx` with `starlette.testclient`", Warning),  # Airflow's in-process API under dag.test()
    ("The HMAC key is", UserWarning),  # dag.test()'s in-process task tokens (Airflow's 16-byte secret)
)


def quiet_warnings() -> None:
    for message, category in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    # MLflow's log_model turns UserWarnings back on ("once", ahead of any filter): drop ours
    # where they are shown as well.
    show = warnings.showwarning

    def show_unless_quiet(message, category, *args, **kwargs):
        if not any(re.match(m, str(message)) and issubclass(category, c) for m, c in QUIET_WARNINGS):
            show(message, category, *args, **kwargs)

    warnings.showwarning = show_unless_quiet
    # Airflow puts its own "default" filter for DeprecationWarning in airflow.* ahead of these
    # unless Python was given -W options (airflow/configuration.py): say that we were.
    if not sys.warnoptions:
        sys.warnoptions.append("ignore::DeprecationWarning")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="damnet",
        description="DAM-Net: adapt a building change-detection model to a new region.",
    )
    parser.add_argument("--version", action="version", version=f"damnet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--threads", type=_threads, metavar="N",
                        help=f"torch CPU threads (env {ENV_VAR}; default: the CPUs this process may use, "
                        "from its CPU affinity and cgroup CPU quota)")
    sub = parser.add_subparsers(dest="step", required=True, metavar="STEP")
    for name, module_name in STEPS.items():
        module = importlib.import_module(module_name)
        doc = module.__doc__ or name
        p = sub.add_parser(name, help=doc.strip().splitlines()[0], description=doc)
        spec.add_arguments(p, name)
        p.set_defaults(_run=module.run)
    return parser


def _threads(text: str) -> int:
    try:
        return parse_threads(text, "--threads")
    except ThreadsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


#: exit status of a run stopped by Ctrl-C (SIGINT), as shells report it
EXIT_INTERRUPTED = 130
#: ... and of one stopped by SIGTERM
EXIT_TERMINATED = 143


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that it unwinds like Ctrl-C: locks released,
    the MLflow run ended as KILLED, nothing half-written committed. Without a handler SIGTERM
    ends Python on the spot, and a pod stopped by Kubernetes left its step's lock behind."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


def check_store(store: str | None) -> None:
    """Refuse a local ``--store`` that is a file before a step looks for records in it."""
    if not store or is_s3(store):
        return
    path = local_path(store)
    if path.exists() and not path.is_dir():
        raise StorageError(f"--store {store}: is a file, not a folder")
    blocker = next((p for p in reversed(path.absolute().parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise StorageError(f"--store {store}: {blocker} is a file, not a folder")


def main(argv: list[str] | None = None) -> int:
    # Pod logs and DAG task logs are not terminals: no MLflow download bars there.
    if not sys.stderr.isatty():
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    # Before torch loads: its idle OpenMP threads sleep instead of spinning (damnet/threads.py).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    bound_gdal_cache()  # GDAL's block cache: MBs, not 5 % of the node's RAM
    args = build_parser().parse_args(argv)
    # (signal handlers belong to the main thread; main() is also called in-process by tests)
    handler = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if handler else None
    try:
        return _run(args)
    finally:
        if handler:
            signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not args.verbose:  # MLflow's database set-up chatter is not news to the user
        quiet_warnings()
        for name in ("mlflow", "alembic", "great_expectations", "botocore", "rasterio"):
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        check_store(getattr(args, "store", None))
        if getattr(args, "device", None):  # a device that is not there: refused before anything runs
            from damnet.device import resolve_device  # (torch: after OMP_WAIT_POLICY is set)

            resolve_device(args.device)
        configure_threads(args.threads)
        args._run(args)
    except DamnetError as exc:
        print(f"error: {redact_secrets(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # an MLflow call deep in a step whose server stopped answering
        unavailable = tracking.unavailable_from(exc)
        if unavailable is None:
            raise
        print(f"error: {redact_secrets(str(unavailable))}", file=sys.stderr)
        return unavailable.exit_code
    except KeyboardInterrupt as exc:
        what = "terminated" if isinstance(exc, Terminated) else "interrupted"
        print(f"error: {what} (damnet {args.step})", file=sys.stderr)
        return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
