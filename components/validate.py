"""Validate a tiled region with a Great Expectations suite before any GPU time is spent.

Checks: both dates share CRS and pixel size, band count and data type as expected, nodata
share bounded, brightness sane, misregistration between the dates (phase correlation)
under a limit, enough tiles. A failing region stops the pipeline with a short summary of
the failing expectations; the Data Docs HTML is kept with the step's outputs and logged to
MLflow either way. Also reports how far the region's pixel statistics are from the source
region's (information, never a failure).
Outputs: validation.json, tiles.csv, expectations.json, data_docs/index.html. Every run,
passed or failed, also points ``STORE/regions/REGION/validate/latest.json`` at its report, so
the region report can show a failed validation (which has no step record) with its reasons.
"""

from __future__ import annotations

import argparse
import time

from components.records import Layout, StepError, input_of, read_record, upstream, write_json
from components.step import RunOptions, run_step
from components.tracking import log_artifacts
from damnet.validation import ValidationConfig, ValidationFailed, validate_region


def run(args: argparse.Namespace) -> None:
    layout = Layout.from_args(args)
    ingest = upstream(layout, "ingest")
    try:
        config = ValidationConfig(min_tiles=args.min_tiles, max_misregistration_px=args.max_misregistration_px,
                                  max_nodata_fraction=args.max_nodata_fraction,
                                  max_mean_nodata_fraction=args.max_mean_nodata_fraction, mostly=args.mostly,
                                  tile_misregistration_severity=args.tile_misregistration_severity)
    except ValueError as exc:
        raise StepError(f"damnet validate: {exc}") from None
    inputs = {"tiles": input_of(ingest, "tiles")}
    source = read_record(layout.of(args.source_region), "ingest") if args.source_region != layout.region else None
    if source is not None:
        inputs["source_tiles"] = input_of(source, "tiles")
    params = {"validation": config.__dict__ | {"dtypes": list(config.dtypes)}}

    def body(run):
        report = validate_region(ingest["outputs"]["tiles"], run.out, config,
                                 source_uri=source["outputs"]["tiles"] if source else None)
        run.outputs.update(report=report.paths["report"], data_docs=report.paths["data_docs"],
                           tiles_csv=report.paths["tiles"])
        stats = {k: v for k, v in report.statistics.items() if isinstance(v, int | float)}
        run.metrics.update({f"validation_{k}": v for k, v in stats.items()}, passed=float(report.success))
        for k, v in (report.domain_distance or {}).items():
            if isinstance(v, int | float):
                run.metrics[f"domain_{k}"] = v
        docs = run.path("data_docs")
        if not report.success:  # keep the evidence with the failed run, then stop the pipeline
            _latest(layout, False, report.paths["report"], report.paths["data_docs"], run.key)
            log_artifacts([(docs, "data_docs"), (report.paths["report"], None)])
            raise ValidationFailed(report)
        run.artifact(docs, "data_docs")
        run.artifact(report.paths["report"])

    record = run_step("validate", inputs, params, body, layout, RunOptions.from_args(args))
    # A passed run points latest.json at its report only once its record is committed.
    _latest(layout, True, record["outputs"]["report"], record["outputs"]["data_docs"], record["key"])


def _latest(layout: Layout, success: bool, report: str, data_docs: str, key: str) -> None:
    write_json(layout.latest_validation, {
        "success": success, "report": report, "data_docs": data_docs, "key": key,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
