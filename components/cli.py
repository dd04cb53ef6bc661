"""The ``damnet`` command: one sub-command per pipeline step.

Errors in the user's input (``DamnetError``) print one ``error:`` line and exit with
status 2; a candidate the promotion gate refuses exits with 3 (a verdict, not a failure);
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from components import spec
from damnet import __version__
from damnet.errors import DamnetError
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
    "demo": "components.demo",
}


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


def main(argv: list[str] | None = None) -> int:
    # Pod logs and DAG task logs are not terminals: no MLflow download bars there.
    if not sys.stderr.isatty():
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    # Before torch loads: its idle OpenMP threads sleep instead of spinning (damnet/threads.py).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not args.verbose:  # MLflow's database set-up chatter is not news to the user
        for name in ("mlflow", "alembic", "great_expectations"):
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        configure_threads(args.threads)
        args._run(args)
    except DamnetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
