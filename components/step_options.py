"""The options of every ``damnet`` step (see :mod:`components.spec`): one function per step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from components.spec import REGION_PATTERN, Opt, common, device, source_model, source_region, store

#: --steps of each training mode: short CPU runs (a region on a laptop in minutes); this is the
#: workflows' "cpu" compute profile, and PROFILE_STEPS holds the others'.
DEFAULT_STEPS = {"supervised": 300, "pretrain": 100, "adapt": 150, "finetune": 100}
PROFILE_STEPS = {"adapt": {"cpu-small": 60, "gpu": 3000}, "finetune": {"cpu-small": 40, "gpu": 2000}}


def training_options(mode: str) -> list[Opt]:
    """The options of a step that runs ``damnet.train.fit`` in ``mode``; every one whose name
    is a ``TrainConfig`` field is passed on to it (components.training.train_config)."""
    from damnet.models import PRESETS
    from damnet.train import MODES

    base = MODES[mode]
    g: dict[str, Any] = {"group": "training", "tunable": True}
    opts = [
        Opt("--steps", "int", DEFAULT_STEPS[mode], "optimiser steps", minimum=1, **g),
        Opt("--batch-size", "int", base.batch_size, "tiles per batch", minimum=1, **g),
        Opt("--crop", "int", base.crop, "training crop (pixels)", minimum=8, **g),
        Opt("--lr", "float", base.lr, "learning rate", exclusive_minimum=0, maximum=1, **g),
        Opt("--seed", "int", 0, "random seed", minimum=0, **g),
        replace(device(), group="training"),
    ]
    if mode in ("adapt", "finetune"):
        inherit = mode == "finetune"  # None: as the region's adapt step (what the model was adapted with)
        same = " (default: as the region's adapt step)" if inherit else ""
        opts += [
            Opt("--lambda-adv", "float", base.lambda_adv, "weight of the adversarial term", minimum=0, maximum=1, **g),
            Opt("--photometric", "float", base.photometric,
                "strength of per-date photometric jitter on labelled batches (0: off)", minimum=0, **g),
            Opt("--prior-weight", "float", base.prior_weight,
                "weight of the change-share prior on target predictions (0: off)", minimum=0, **g),
            Opt("--entropy-weight", "float", base.entropy_weight,
                "weight of entropy minimisation on target predictions (ADVENT; 0: off)", minimum=0, **g),
            Opt("--pseudo-weight", "float", base.pseudo_weight,
                "weight of self-training on the target (EMA teacher; 0: off)", minimum=0, **g),
            Opt("--anchor-weight", "float", base.anchor_weight,
                "weight of the KL to the starting model's change map on unlabelled target tiles (keeps MLFT "
                "from rewriting the model where the micro tiles do not speak; 0: off)", minimum=0, **g),
            Opt("--quiet-anchor-weight", "float", base.quiet_anchor_weight,
                "the anchor's weight when no micro label marks change (labels that can only say 'no change' "
                "must not push the whole region there; 0: --anchor-weight)", minimum=0, **g),
            Opt("--anchor-on", default=base.anchor_on, choices=("all", "change"),
                help="pixels the anchor holds: all valid ones, or those the starting model calls change", **g),
            Opt("--restyle", "float", None if inherit else base.restyle,
                "probability that a source pair takes a target pair's band histograms, date by date "
                f"(pixel-level alignment; 0: off){same}", minimum=0, maximum=1, **g),
            Opt("--match-gsd", "bool", None if inherit else base.match_gsd,
                "resample source batches to the target's ground sample distance (from the tiles' "
                f"geotransforms){same}", **g),
        ]
    if mode == "supervised":
        opts.append(Opt("--preset", default="tiny", choices=tuple(sorted(PRESETS)), help="model size", **g))
    return opts


TILE: dict[str, Any] = {"minimum": 32, "maximum": 2048, "multiple_of": 32}  #: bounds of a tile or window side
TUNE: dict[str, Any] = {"tunable": True}


def _synth() -> list[Opt]:
    from damnet.synthetic import STYLES

    return [
        Opt("--style", required=True, choices=tuple(sorted(STYLES)), help="domain style of the imagery"),
        Opt("--out", required=True, help="region folder or s3:// prefix"),
        Opt("--scenes", "int", 4, "scene pairs", minimum=1),
        Opt("--size", "int", 512, "scene side in pixels", minimum=32, maximum=20000),
        Opt("--seed", "int", 0, "random seed", minimum=0),
        Opt("--labels-out", help="write labels here instead of OUT/label (keeps them from the pipeline)"),
        Opt("--quicklook", help="PNG of the first scene: pre | post | label"),
]


def _ingest() -> list[Opt]:
    from damnet.imagery import DEFAULT_LABEL_THRESHOLD

    return [
        *common(),
        Opt("--imagery", default="", help="region folder or s3:// prefix (default: STORE/imagery/REGION)"),
        Opt("--tile-size", "int", 256, "tile side in pixels", **TILE, **TUNE),
        Opt("--overlap", "int", 0, "pixels shared by neighbouring tiles", minimum=0, **TUNE),
        Opt("--bands", default="", pattern=r"^$|^[^,]+,[^,]+,[^,]+$",
            help="R,G,B bands of imagery with other than 3 bands: 1-based numbers (e.g. 3,2,1 for Sentinel-2 "
            "B02,B03,B04,B08 files) or band descriptions (e.g. B04,B03,B02); empty: exactly 3 bands", **TUNE),
        Opt("--label-threshold", "int", DEFAULT_LABEL_THRESHOLD,
            "a label pixel is change when its value (0..255; 0/1 labels read as 0/255, colour labels by their "
            "largest component, transparent pixels as 0) is above this; 0 for class-number labels",
            minimum=0, maximum=254, **TUNE),
        Opt("--require-labels", "switch", False, "fail on a pair without a label (a source region)"),
        Opt("--skip-bad", "switch", False, "skip bad pairs with a warning line each instead of failing"),
]


def _validate() -> list[Opt]:
    from damnet.validation import ValidationConfig

    v = ValidationConfig()
    return [
        *common(), source_region("compare pixel statistics with this region"),
        Opt("--min-tiles", "int", v.min_tiles, "fewer tiles fail the region", minimum=0, **TUNE),
        Opt("--max-misregistration-px", "float", v.max_misregistration_px,
            "largest shift between the dates, in pixels: a pair above it fails the region, tiles above it "
            "are reported (see --tile-misregistration-severity); pairs without enough evidence are reported, "
            "not failed", exclusive_minimum=0, **TUNE),
        Opt("--tile-misregistration-severity", default=v.tile_misregistration_severity,
            choices=("warning", "critical"),
            help="tiles above the misregistration limit: a warning, or critical (fail the region too)", **TUNE),
        Opt("--max-nodata-fraction", "float", v.max_nodata_fraction,
            "largest share of a tile's pixels (inside the scene) without data", minimum=0, maximum=1, **TUNE),
        Opt("--max-mean-nodata-fraction", "float", v.max_mean_nodata_fraction,
            "largest share of the region's pixels without data", minimum=0, maximum=1, **TUNE),
        Opt("--mostly", "float", v.mostly, "share of tiles that must pass each per-tile check",
            exclusive_minimum=0, maximum=1, **TUNE),
]


def _train() -> list[Opt]:
    return [
        *common(region_default="source"), *training_options("supervised"),
        Opt("--holdout", "float", 0.2, "share of tiles kept for evaluation (the source holdout)",
            minimum=0, exclusive_maximum=1, **TUNE),
        Opt("--margin", "float", 0.0, "holdout F1 a new source model must gain over the champion to replace it",
            minimum=0, maximum=1, **TUNE),
]


def _pretrain() -> list[Opt]:
    return [
        *common(), source_region(),
        source_model("registry URI or model file whose encoder pretraining continues from"),
        Opt("--preset", choices=_presets(), help="start a fresh encoder of this preset instead of the source model's"),
        *training_options("pretrain"),
]


def _adapt() -> list[Opt]:
    return [
        *common(), source_model("registry URI or model file of the model to adapt"), source_region(),
        Opt("--use-pretrain", "bool", False, "start the encoder from this region's pretrain step (MAE)"),
        Opt("--match-histograms", "float", 0.5, "radiometric alignment: the adapted model (and the candidate "
            "fine-tuned from it) reads the region through per-date, per-band histogram matching to the source "
            "tiles, blended with the identity at this strength (0: off; 0.5 measured best over the real "
            "targets, docs/benchmarks.md)",
            minimum=0, maximum=1, tunable=True),
        *training_options("adapt"),
]


def _select() -> list[Opt]:
    from damnet.select import DEFAULT_BUDGET, DEFAULT_MIN_AUDIT, SELECTORS

    return [
        *common(),
        Opt("--budget", "float", DEFAULT_BUDGET, "tiles to label: a share of the region (< 1) or a count (>= 1)",
            exclusive_minimum=0, **TUNE),
        Opt("--audit", "float", 0.01,
            "audit tiles: a share of the region (< 1; raised to --min-audit) or a count (>= 1)",
            exclusive_minimum=0, **TUNE),
        Opt("--min-audit", "int", DEFAULT_MIN_AUDIT, "fewest audit tiles a share gives (at most half the region): "
            "the promotion gate needs enough audit tiles to decide (>= 10, 5 with change)", minimum=0, **TUNE),
        Opt("--selector", default="combined", choices=SELECTORS, help="how the micro-label tiles are chosen", **TUNE),
        Opt("--reference", default="none", choices=("none", "source"),
            help="second opinion for the scores: none (the adapted model's uncertainty alone) or the source "
            "model adapt started from (their disagreement joins the combined selector)", **TUNE),
        Opt("--mc-samples", "int", 0, "MC-dropout passes (mutual_info)", minimum=0, maximum=64, **TUNE),
        Opt("--max-label-share", "float", 0.01, "refuse a budget above this share of the region's tiles",
            exclusive_minimum=0, maximum=1, **TUNE),
        Opt("--seed", "int", 0, "random seed", minimum=0, **TUNE),
        device(),
]


def _export_labels() -> list[Opt]:
    return [
        *common(),
        Opt("--image-url-prefix", help="prefix of image URLs in the tasks (e.g. the export's s3:// URI with a "
            "Label Studio S3 source storage); default: relative paths"),
        device(),
]


def _simulate_labeler() -> list[Opt]:
    return [
        *common(),
        Opt("--truth", required=True, help="folder of ground-truth label scenes (one per pair)"),
        Opt("--out", help="where the export goes (default STORE/labels/REGION/export.json)"),
]


def _import_labels() -> list[Opt]:
    return [
        *common(),
        Opt("--labels", default="",
            help="Label Studio JSON export (.json) or folder of <tile_id>.png masks (default: STORE/labels/REGION)"),
]


def _finetune() -> list[Opt]:
    return [*common(), source_region(), *training_options("finetune")]


def _evaluate() -> list[Opt]:
    return [
        *common(), source_region(),
        Opt("--champion", help="model to compare with (default: damnet-REGION@champion, else damnet-source@champion)"),
        device(),
]


def _promote() -> list[Opt]:
    from damnet.registry import Evidence

    ev = Evidence()
    return [
        *common(),
        Opt("--margin", "float", 0.01, "the audit F1 gain's lower bound (paired bootstrap over audit tiles) must "
            "exceed this; >= 0: a tie never promotes; below 0 (never from the workflows): a candidate up to that "
            "much worse is promoted", minimum=-1, maximum=1, **TUNE),
        Opt("--max-source-drop", "float", 0.05,
            "largest allowed drop of source-holdout F1 against the source model", minimum=0, maximum=1, **TUNE),
        Opt("--required", default=_required(),
            help="comma-separated metrics the candidate must have (besides audit_f1 and source_f1)"),
        Opt("--min-audit-tiles", "int", ev.min_tiles,
            "fewer audit tiles than this: not enough audit evidence, no promotion", minimum=1, **TUNE),
        Opt("--min-change-tiles", "int", ev.min_change_tiles,
            "fewer audit tiles with true change than this: not enough audit evidence", minimum=1, **TUNE),
        Opt("--confidence", "float", ev.confidence, "level of the two-sided paired bootstrap interval whose "
            "lower bound must clear the margin", minimum=0.5, exclusive_maximum=1, **TUNE),
        Opt("--resamples", "int", ev.resamples, "bootstrap resamples of the audit tiles", minimum=100, **TUNE),
]


def _predict() -> list[Opt]:
    return [
        *common(),
        Opt("--model", help="registry URI or model file (default: the region's champion)"),
        Opt("--imagery", default="", help="scene pairs to map (default: STORE/imagery/REGION)"),
        Opt("--tile", "int", 256, "prediction window in pixels", **TILE, **TUNE),
        Opt("--overlap", "int", 64, "pixels shared by neighbouring windows (blended)", minimum=0, **TUNE),
        Opt("--batch-size", "int", 4, "windows per batch", minimum=1, **TUNE),
        Opt("--threshold", "float", 0.5, "change probability a pixel needs", exclusive_minimum=0,
            exclusive_maximum=1, **TUNE),
        Opt("--min-area-px", "int", 16, "drop polygons smaller than this", minimum=0, **TUNE),
        device(),
]


def _report() -> list[Opt]:
    return [*common(), Opt("--max-tiles", "int", 24, "selected tiles shown", minimum=0, **TUNE)]


def _rescore() -> list[Opt]:
    return [
        *common(),
        Opt("--max-drop", "float", 0.02, "largest tolerated audit F1 drop", minimum=0, maximum=1),
        device(),
]


def _presets() -> tuple[str, ...]:
    from damnet.models import PRESETS

    return tuple(sorted(PRESETS))


def _required() -> str:
    from damnet import registry

    return ",".join(registry.REQUIRED_METRICS)


def _demo_options() -> list[Opt]:
    from damnet.synthetic import TARGET_STYLES

    return [
        Opt("--out", default="runs/demo", help="local folder for everything the demo makes"),
        Opt("--region", default="newtown", pattern=REGION_PATTERN, help="name of the new target region"),
        Opt("--target-style", default="target_season", choices=tuple(TARGET_STYLES),
            help="domain style of the target region"),
        Opt("--scenes", "int", 8, "scene pairs of the target region", minimum=1),
        Opt("--size", "int", 512, "scene side in pixels", minimum=64, maximum=4096),
        Opt("--tile-size", "int", 64, "tile side in pixels", minimum=32, maximum=2048, multiple_of=32),
        Opt("--budget", "float", 0.0099, "micro-label budget (share of tiles, < 1 %)", exclusive_minimum=0),
        Opt("--audit", "float", 0.04, "audit tiles: a share or a count", exclusive_minimum=0),
        Opt("--max-label-share", "float", 0.01, "refuse budgets above this share", exclusive_minimum=0, maximum=1),
        Opt("--source-steps", "int", 300, "training steps of the source model", minimum=1),
        Opt("--adapt-steps", "int", 150, "adaptation steps", minimum=1),
        Opt("--finetune-steps", "int", 100, "fine-tuning steps", minimum=1),
        Opt("--seed", "int", 0, "random seed", minimum=0),
    ]


_CACHE: dict[str, list[Opt]] = {}


def _scan() -> list[Opt]:
    return [
        store(),
        Opt("--source-regions", default="source", env="DAMNET_SOURCE_REGIONS",
            help="comma-separated regions never re-run (env DAMNET_SOURCE_REGIONS)"),
        Opt("--run-group", default="manual", env="DAMNET_RUN_GROUP",
            help="the pipeline run this scan is part of (logged)"),
        Opt("--json", "switch", False, "print the result as one JSON line, last"),
    ]


def _labels_status() -> list[Opt]:
    return [
        store(),
        Opt("--region", required=True, pattern=REGION_PATTERN, help="region name"),
        Opt("--json", "switch", False, "print the status as one JSON line"),
        Opt("--pull", "switch", False, "with a Label Studio server configured (LABEL_STUDIO_URL, "
            "LABEL_STUDIO_API_KEY) and an empty inbox: ask it how many tasks are done and pull the export "
            "into the inbox when all are (the fine-tune DAG's labels wait)"),
    ]


def _label_studio(push: bool) -> list[Opt]:
    """labels-push / labels-pull: the region's tasks to and from a Label Studio server."""
    opts = [
        store(),
        Opt("--region", required=True, pattern=REGION_PATTERN, help="region name"),
        Opt("--run-group", default="manual", env="DAMNET_RUN_GROUP", help="the pipeline run this is part of"),
        Opt("--json", "switch", False, "print the result as one JSON line, last"),
    ]
    if push:
        return opts + [
            Opt("--images", default="auto", choices=("auto", "upload", "s3", "as-exported"),
                help="how Label Studio gets the images: upload them through its API, an S3 source storage "
                "on the store (s3:// stores), or the URLs export-labels wrote; auto: s3 for an s3:// store"),
            Opt("--s3-credentials", default="server", choices=("server", "store"),
                help="--images s3: Label Studio reads the bucket with its own AWS credentials (server), or "
                "with this environment's AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, stored in its database"),
            Opt("--s3-endpoint", default="", env="DAMNET_S3_ENDPOINT_URL",
                help="--images s3: the S3 endpoint Label Studio uses (env DAMNET_S3_ENDPOINT_URL; empty: AWS)"),
        ]
    return opts + [Opt("--partial", "switch", False, "pull the annotated tasks even if not all are done")]


#: step -> the function that declares its options
STEP_OPTIONS: dict[str, Callable[[], list[Opt]]] = {
    "synth": _synth,
    "ingest": _ingest,
    "validate": _validate,
    "train": _train,
    "pretrain": _pretrain,
    "adapt": _adapt,
    "select": _select,
    "export-labels": _export_labels,
    "simulate-labeler": _simulate_labeler,
    "import-labels": _import_labels,
    "finetune": _finetune,
    "evaluate": _evaluate,
    "promote": _promote,
    "predict": _predict,
    "report": _report,
    "rescore": _rescore,
    "scan": _scan,
    "labels-status": _labels_status,
    "labels-push": lambda: _label_studio(push=True),
    "labels-pull": lambda: _label_studio(push=False),
    "demo": _demo_options,
}
