"""The Great Expectations checks of a region's tile table: the Expectation Suite and running it.

Great Expectations is imported lazily (:func:`_gx`): importing this module stays fast.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from damnet.validation.config import BANDS, DATES, REPORT_FORMAT, ValidationConfig

if TYPE_CHECKING:
    from great_expectations.expectations import Expectation


@dataclass(frozen=True)
class Check:
    """One expectation of the suite, the key that traces its result back to it, and the
    unit its failure line gives values in."""

    key: str
    expectation: Expectation
    unit: str = ""

    @property
    def severity(self) -> str:
        return str(getattr(self.expectation.severity, "value", self.expectation.severity))


def _gx():
    """``great_expectations``, imported lazily (it takes seconds) and without the side
    effect of its import: it routes every warning of the process to logging."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    before = warnings.showwarning
    import great_expectations as gx
    import great_expectations.expectations  # noqa: F401 - the module that does it

    if warnings.showwarning is not before:
        logging.captureWarnings(False)
    return gx


def _checks(config: ValidationConfig) -> list[Check]:
    gxe = _gx().expectations

    c, mostly = config, config.mostly
    checks = [
        Check("min_tiles", gxe.ExpectTableRowCountToBeBetween(
            min_value=c.min_tiles, description=f"The region has at least {c.min_tiles} tiles.")),
        Check("unique_tile_id", gxe.ExpectColumnValuesToBeUnique(
            column="tile_id", description="Every tile id is unique.")),
    ]
    for date in DATES:
        checks += [
            Check(f"bands_{date}", gxe.ExpectColumnValuesToBeInSet(
                column=f"bands_{date}", value_set=[c.bands],
                description=f"{date.capitalize()} tiles have {c.bands} bands.")),
            Check(f"dtype_{date}", gxe.ExpectColumnValuesToBeInSet(
                column=f"dtype_{date}", value_set=list(c.dtypes),
                description=f"The {date} scenes' data type is one of {', '.join(c.dtypes)}.")),
        ]
    checks += [
        Check("nodata", gxe.ExpectColumnValuesToBeBetween(
            column="nodata_fraction", min_value=0.0, max_value=c.max_nodata_fraction, mostly=mostly,
            description=f"A tile has at most {c.max_nodata_fraction:g} of its pixels without data.")),
        Check("nodata_mean", gxe.ExpectColumnMeanToBeBetween(
            column="nodata_fraction", min_value=0.0, max_value=c.max_mean_nodata_fraction,
            description=f"Over the region at most {c.max_mean_nodata_fraction:g} of the pixels "
            "have no data.")),
    ]
    for date in DATES:
        for band in BANDS:
            checks.append(Check(f"mean_{date}_{band}", gxe.ExpectColumnValuesToBeBetween(
                column=f"mean_{date}_{band}", min_value=c.brightness_low, max_value=c.brightness_high,
                mostly=mostly, description=f"Mean {band.upper()} of a {date} tile is within "
                f"{c.brightness_low:g}..{c.brightness_high:g} DN (not dark, not saturated)."), "DN"))
        for band in BANDS:
            checks.append(Check(f"std_{date}_{band}", gxe.ExpectColumnValuesToBeBetween(
                column=f"std_{date}_{band}", min_value=c.min_std, mostly=mostly,
                description=f"{band.upper()} of a {date} tile varies (std at least {c.min_std:g} DN; "
                "not blank)."), "DN"))
    checks += [
        Check("misregistration", gxe.ExpectColumnValuesToBeBetween(
            column="misregistration_px", min_value=0.0, max_value=c.max_misregistration_px,
            mostly=mostly, severity=c.tile_misregistration_severity,
            description="Estimated shift between the pre and post tile (phase correlation) is "
            f"at most {c.max_misregistration_px:g} px."), "px"),
        Check("pair_misregistration", gxe.ExpectColumnValuesToBeBetween(
            column="pair_misregistration_px", min_value=0.0, max_value=c.max_misregistration_px,
            description="Estimated shift between the pre and post scene of a pair (phase "
            f"correlation over all its tiles) is at most {c.max_misregistration_px:g} px."), "px"),
    ]
    if c.same_grid:
        tol = c.pixel_size_tolerance
        checks += [
            Check("single_crs", gxe.ExpectColumnUniqueValueCountToBeBetween(
                column="crs_pre", min_value=1, max_value=1,
                description="All tiles of the region are in one CRS.")),
            Check("single_pixel_size", gxe.ExpectColumnUniqueValueCountToBeBetween(
                column="pixel_size", min_value=1, max_value=1,
                description="All tiles of the region have one pixel size.")),
            Check("crs_between_dates", gxe.ExpectColumnPairValuesToBeEqual(
                column_A="crs_pre", column_B="crs_post",
                description="The pre and post scenes were in the same CRS before ingest.")),
            Check("pixel_size_between_dates", gxe.ExpectColumnValuesToBeBetween(
                column="res_ratio", min_value=1 / (1 + tol), max_value=1 + tol,
                description="The post scene's pixel size was the pre scene's (within "
                f"{tol:.0%}) before ingest.")),
        ]
    for check in checks:  # lets a result be traced back to its check
        check.expectation.meta = {**(check.expectation.meta or {}), "damnet_check": check.key}
    return checks


def build_suite(config: ValidationConfig | None = None):
    """The Expectation Suite (not added to any context) for ``config``."""
    gx = _gx()

    config = config or ValidationConfig()
    return gx.ExpectationSuite(name=config.suite_name, meta={"damnet": REPORT_FORMAT},
                               expectations=[c.expectation for c in _checks(config)])


def run_suite(df, config: ValidationConfig, workdir: Path, progress: bool | None, timings: dict,
               run_name: str):
    """Run the suite on ``df`` in a file-mode GE project under ``workdir``.

    Returns (suite JSON dict, [(check, GE result)], the local Data Docs folder).
    """
    t = time.perf_counter()
    gx = _gx()
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.base import ProgressBarsConfig

    timings["ge_import"] = time.perf_counter() - t
    t = time.perf_counter()
    context = gx.get_context(mode="file", project_root_dir=str(workdir))
    show = bool(progress)
    context.variables.progress_bars = ProgressBarsConfig(globally=show, metric_calculations=show)
    batch = (context.data_sources.add_pandas("damnet").add_dataframe_asset("tiles")
             .add_batch_definition_whole_dataframe("region"))
    checks = _checks(config)
    suite = context.suites.add(gx.ExpectationSuite(
        name=config.suite_name, meta={"damnet": REPORT_FORMAT},
        expectations=[c.expectation for c in checks]))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(data=batch, suite=suite, name=f"{config.suite_name}-tiles"))
    checkpoint = context.checkpoints.add(gx.Checkpoint(
        name=f"{config.suite_name}-checkpoint", validation_definitions=[definition],
        actions=[gx.checkpoint.UpdateDataDocsAction(name="data-docs")],
        result_format={"result_format": "SUMMARY", "unexpected_index_column_names": ["tile_id"]},
    ))
    timings["ge_setup"] = time.perf_counter() - t
    t = time.perf_counter()
    result = checkpoint.run(batch_parameters={"dataframe": df}, run_id=RunIdentifier(run_name=run_name))
    timings["ge_run"] = time.perf_counter() - t
    (run,) = result.run_results.values()
    by_key = {(r.expectation_config.meta or {}).get("damnet_check"): r for r in run.results}
    pairs = [(check, by_key[check.key]) for check in checks]
    docs = workdir / "gx" / "uncommitted" / "data_docs" / "local_site"
    return suite.to_json_dict(), pairs, docs


def ge_version() -> str:
    return str(_gx().__version__)
