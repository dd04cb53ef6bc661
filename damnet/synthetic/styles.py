"""Domain styles: everything that makes one synthetic region look like itself.

Domain styles shift the factors that differ between real cities and sensors: radiometry,
season, ground resolution, building style, blur/noise, misregistration. ``source`` is the
labelled training domain; the ``target_*`` styles are new regions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

RGB = tuple[float, float, float]


@dataclass(frozen=True)
class Radiometry:
    """How a sensor turns ground reflectance (0..1, RGB) into digital numbers."""

    mix: tuple[RGB, RGB, RGB] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    gain: RGB = (1.0, 1.0, 1.0)
    haze: float = 0.0  #: share of the signal replaced by airlight
    airlight: RGB = (0.75, 0.78, 0.85)
    gamma: float = 1.0
    dtype: str = "uint8"
    bit_depth: int = 8  #: for uint16: the sensor's effective bits (e.g. 11)
    dark_level: int = 0  #: DN offset of a black pixel (uint16 sensors)


@dataclass(frozen=True)
class DomainStyle:
    """Everything that makes one region look like itself. Lengths in metres."""

    name: str
    description: str
    gsd: float = 0.5
    # City layout and building style
    road_spacing: tuple[float, float] = (55.0, 80.0)
    road_width: tuple[float, float] = (7.0, 10.0)
    road_rgb: RGB = (0.42, 0.42, 0.43)
    lot_width: tuple[float, float] = (14.0, 20.0)
    building_size: tuple[float, float] = (8.0, 14.0)
    building_height: tuple[float, float] = (4.0, 9.0)
    building_density: float = 0.75  #: share of lots built in the first date
    park_share: float = 0.12  #: share of blocks with no buildings
    roof_palette: tuple[RGB, ...] = (
        (0.62, 0.30, 0.22),
        (0.55, 0.25, 0.20),
        (0.50, 0.48, 0.47),
        (0.38, 0.36, 0.36),
        (0.66, 0.52, 0.40),
    )
    gable_share: float = 0.8
    rotation_jitter: float = 4.0  #: degrees of building rotation against the street
    # Season and ground
    vegetation_rgb: RGB = (0.26, 0.42, 0.18)
    vegetation_rgb_post: RGB = (0.32, 0.45, 0.20)  #: season drift by the second date
    soil_rgb: RGB = (0.55, 0.47, 0.38)
    vegetation_cover: float = 0.7
    tree_density: float = 6e-3  #: trees per square metre of open ground
    tree_rgb: RGB = (0.15, 0.30, 0.12)
    landcover_changes: int = 3  #: soil <-> vegetation patches flipped between dates
    # Illumination
    sun_azimuth: float = 135.0  #: degrees from north, clockwise
    sun_azimuth_post: float = 150.0
    shadow_factor: float = 0.6  #: shadow length per metre of height
    shadow_strength: float = 0.45
    illumination_post: float = 1.05
    # Sensor and degradations
    radiometry: Radiometry = field(default_factory=Radiometry)
    radiometry_post: Radiometry | None = None  #: another sensor for the second date
    blur_sigma: float = 0.5  #: pixels
    noise_std: float = 0.012  #: in reflectance units
    misregistration: float = 0.5  #: max shift of the second date, pixels
    # Changes
    development_share: float = 0.3  #: share of blocks built up between the dates
    new_building_rate: float = 0.08  #: share of other empty lots built by the second date
    demolition_rate: float = 0.04  #: share of first-date buildings gone by the second
    crs: str = "EPSG:32631"

    def to_dict(self) -> dict:
        return asdict(self)


STYLES: dict[str, DomainStyle] = {
    "source": DomainStyle(
        name="source",
        description="Labelled source city: summer suburb, red and grey gable roofs, 0.5 m, "
        "neutral 8-bit sensor.",
    ),
    "target_sensor": DomainStyle(
        name="target_sensor",
        description="Radiometry shift: a hazy, blue-green 11-bit sensor for the first date "
        "and a warmer, darker one for the second; stronger noise.",
        crs="EPSG:32633",
        radiometry=Radiometry(
            mix=((0.70, 0.25, 0.05), (0.10, 0.85, 0.15), (0.05, 0.30, 0.90)),
            gain=(0.85, 1.05, 1.25),
            haze=0.35,
            gamma=0.75,
            dtype="uint16",
            bit_depth=11,
            dark_level=80,
        ),
        radiometry_post=Radiometry(
            mix=((1.05, 0.05, 0.0), (0.05, 0.95, 0.0), (0.0, 0.05, 0.80)),
            gain=(0.80, 0.72, 0.62),
            haze=0.10,
            gamma=1.25,
            dtype="uint16",
            bit_depth=11,
            dark_level=80,
        ),
        noise_std=0.03,
        illumination_post=0.85,
    ),
    "target_season": DomainStyle(
        name="target_season",
        description="Season and building style: dry season (brown vegetation, bare soil), "
        "flat white, blue and green metal roofs, low sun with long shadows.",
        crs="EPSG:32636",
        roof_palette=(
            (0.85, 0.86, 0.86),
            (0.30, 0.45, 0.68),
            (0.72, 0.74, 0.76),
            (0.25, 0.52, 0.48),
            (0.78, 0.70, 0.55),
        ),
        gable_share=0.15,
        building_size=(9.0, 18.0),
        lot_width=(16.0, 24.0),
        vegetation_rgb=(0.55, 0.47, 0.30),
        vegetation_rgb_post=(0.48, 0.52, 0.30),
        soil_rgb=(0.78, 0.68, 0.55),
        vegetation_cover=0.35,
        tree_density=2e-3,
        tree_rgb=(0.28, 0.32, 0.16),
        road_rgb=(0.60, 0.58, 0.55),
        landcover_changes=6,
        sun_azimuth=200.0,
        sun_azimuth_post=160.0,
        shadow_factor=1.4,
        shadow_strength=0.55,
    ),
    "target_resolution": DomainStyle(
        name="target_resolution",
        description="Ground resolution and degradations: 1.2 m pixels, dense small dark "
        "roofs, blur, noise and up to 1.5 px misregistration between dates.",
        crs="EPSG:32650",
        gsd=1.2,
        road_spacing=(40.0, 60.0),
        road_width=(5.0, 8.0),
        lot_width=(9.0, 13.0),
        building_size=(7.0, 11.0),
        building_density=0.9,
        tree_density=2.5e-3,
        park_share=0.05,
        roof_palette=(
            (0.22, 0.22, 0.24),
            (0.30, 0.28, 0.28),
            (0.45, 0.20, 0.18),
            (0.55, 0.55, 0.52),
        ),
        gable_share=0.5,
        rotation_jitter=12.0,
        vegetation_rgb=(0.20, 0.36, 0.20),
        vegetation_rgb_post=(0.24, 0.40, 0.18),
        blur_sigma=1.2,
        noise_std=0.035,
        misregistration=1.5,
    ),
}

SOURCE_STYLE = "source"
TARGET_STYLES = tuple(name for name in STYLES if name != SOURCE_STYLE)


def get_style(name: str) -> DomainStyle:
    try:
        return STYLES[name]
    except KeyError:
        raise ValueError(f"unknown domain style {name!r}; known: {', '.join(STYLES)}") from None
