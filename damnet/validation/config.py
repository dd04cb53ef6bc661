"""The settings of region validation (:class:`ValidationConfig`) and the names of what it writes."""

from __future__ import annotations

from dataclasses import dataclass

REPORT = "validation.json"
TILES_CSV = "tiles.csv"
EXPECTATIONS = "expectations.json"
DATA_DOCS = "data_docs"
REPORT_FORMAT = "damnet.validation/1"
BANDS = ("r", "g", "b")
DATES = ("pre", "post")


@dataclass(frozen=True)
class ValidationConfig:
    """Thresholds of the checks. Brightness and texture are in 8-bit digital numbers (DN)
    of the tiles (ingest stretches 16-bit scenes to 8 bits).

    ``mostly`` is the share of tiles that must pass each per-tile check (Great
    Expectations' ``mostly``), so a few bad tiles (a lake, a cloud) do not fail a region.
    """

    bands: int = 3
    dtypes: tuple[str, ...] = ("uint8", "uint16")
    max_nodata_fraction: float = 0.5
    max_mean_nodata_fraction: float = 0.25
    brightness_low: float = 5.0
    brightness_high: float = 250.0
    min_std: float = 2.0
    #: Pairs (and tiles) shifted more than this fail (warn). Co-registered LEVIR pairs measure
    #: up to 3.5 px (0.5 m imagery: rooftops lean with the view angle), so 3 px failed them.
    max_misregistration_px: float = 4.0
    #: Tiles and patches whose correlation peak stands out less than this (peak-to-sidelobe
    #: ratio, see :func:`surface_peak`) give no misregistration estimate.
    min_shift_psr: float = 7.0
    #: Side of the patches the pair estimate is made of (pixels; capped at the tile size).
    shift_patch_px: int = 128
    #: The peak of a pair's summed patch surfaces must stand out this much ...
    min_pair_shift_psr: float = 8.0
    #: ... and this many patches must agree with it (a peak of their own of at least
    #: SUPPORT_SIGMA within ``shift_agree_px``), else the pair's misregistration is unknown
    #: (NaN, not a failure).
    min_agreeing_patches: int = 3
    shift_agree_px: float = 1.5
    min_tiles: int = 4
    same_grid: bool = True  #: one CRS and pixel size across tiles and between the dates
    pixel_size_tolerance: float = 0.01  #: relative, between the dates' pixel sizes
    mostly: float = 0.95
    #: "warning": tiles above the misregistration limit are reported but do not fail the
    #: region (the pair estimate does); "critical": they fail it too.
    tile_misregistration_severity: str = "warning"
    suite_name: str = "damnet-region"

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtypes", tuple(self.dtypes))
        problems = []
        if self.bands < 1:
            problems.append(f"bands must be at least 1, got {self.bands}")
        if not self.dtypes:
            problems.append("dtypes must name at least one data type")
        for name in ("max_nodata_fraction", "max_mean_nodata_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                problems.append(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0 < self.mostly <= 1:
            problems.append(f"mostly must be in (0, 1], got {self.mostly}")
        if not 0 <= self.brightness_low < self.brightness_high:
            problems.append(f"brightness_low must be >= 0 and below brightness_high, got "
                            f"{self.brightness_low}..{self.brightness_high}")
        if min(self.min_std, self.pixel_size_tolerance, self.min_shift_psr, self.min_pair_shift_psr) < 0:
            problems.append("min_std, min_shift_psr, min_pair_shift_psr and pixel_size_tolerance must be >= 0")
        if self.shift_patch_px < 16:
            problems.append(f"shift_patch_px must be at least 16, got {self.shift_patch_px}")
        if self.min_agreeing_patches < 1:
            problems.append(f"min_agreeing_patches must be at least 1, got {self.min_agreeing_patches}")
        if self.shift_agree_px <= 0:
            problems.append(f"shift_agree_px must be > 0, got {self.shift_agree_px}")
        if self.max_misregistration_px <= 0:
            problems.append(f"max_misregistration_px must be > 0, got {self.max_misregistration_px}")
        if self.min_tiles < 0:
            problems.append(f"min_tiles must be >= 0, got {self.min_tiles}")
        if self.tile_misregistration_severity not in ("critical", "warning"):
            problems.append("tile_misregistration_severity must be 'critical' or 'warning', got "
                            f"{self.tile_misregistration_severity!r}")
        if not self.suite_name:
            problems.append("suite_name must not be empty")
        if problems:
            raise ValueError("; ".join(problems))

