"""Synthetic bi-temporal building-change regions in named *domain styles*.

A scene is drawn from a small procedural city: a rotated road grid, blocks split into lots,
buildings (gable or flat roofs) with shadows, trees, cars, and a ground of grass and bare
soil. The second date differs by **real changes** (buildings built on empty lots,
buildings demolished) and by **distractors that are not change**: vegetation colour
(season), sun position (shadows move), illumination, patches of bare soil turning green or
back, moved cars, a different sensor response, and a small misregistration.

Domain styles shift the factors that differ between real cities and sensors: radiometry,
season, ground resolution, building style, blur/noise, misregistration. ``source`` is the
labelled training domain; the ``target_*`` styles are new regions.

Everything is deterministic in ``(style, seed, scene index)``. Geometry lives in metres in a
projected CRS and is rasterised at the style's ground sample distance, so a coarser style
really has smaller buildings in pixels. Labels are on the pre-image grid (like real data,
where the later image carries the co-registration error): 1 = changed building footprint.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.features import rasterize
from scipy import ndimage

from damnet import storage

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


@dataclass
class SyntheticScene:
    """One generated pair. Arrays are band-first: ``pre``/``post`` (3, H, W), ``label`` (H, W)."""

    pre: np.ndarray
    post: np.ndarray
    label: np.ndarray
    transform: Affine
    crs: CRS
    style: DomainStyle
    seed: int
    info: dict
    #: (H, W) int32: 0 outside changed buildings, k inside ``changed[k - 1]``'s footprint
    changes: np.ndarray | None = None
    #: each changed building: ``state`` (new / demolished), ``roof`` (index into the style's
    #: roof palette), ``gable``, ``size_m`` - what a miss analysis groups by (bench/misses.py)
    changed: list[dict] = field(default_factory=list)


def get_style(name: str) -> DomainStyle:
    try:
        return STYLES[name]
    except KeyError:
        raise ValueError(f"unknown domain style {name!r}; known: {', '.join(STYLES)}") from None


# ----------------------------------------------------------------------------- geometry


def _rect(cx: float, cy: float, length: float, width: float, angle: float) -> np.ndarray:
    """Corners (4, 2) of a rectangle centred at (cx, cy), long side along ``angle`` (rad)."""
    u = np.array([np.cos(angle), np.sin(angle)]) * length / 2
    v = np.array([-np.sin(angle), np.cos(angle)]) * width / 2
    c = np.array([cx, cy])
    return np.stack([c + u + v, c - u + v, c - u - v, c + u - v])


def _disc(cx: float, cy: float, r: float, n: int = 12) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def _hull(points: np.ndarray) -> np.ndarray:
    """Convex hull (monotone chain) of (N, 2) points, counter-clockwise."""
    pts = sorted(map(tuple, points))

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list = []
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.array(lower[:-1] + upper[:-1])


def _poly(corners: np.ndarray) -> dict:
    ring = [tuple(map(float, p)) for p in corners]
    return {"type": "Polygon", "coordinates": [ring + [ring[0]]]}


def _burn(polys: list[np.ndarray], shape, transform, values=None) -> np.ndarray:
    """Rasterise polygons; pixel = value of the last polygon covering it (default 1..N)."""
    if not polys:
        return np.zeros(shape, dtype=np.int32)
    values = range(1, len(polys) + 1) if values is None else values
    shapes = ((_poly(p), int(v)) for p, v in zip(polys, values, strict=True))
    return rasterize(shapes, out_shape=shape, transform=transform, fill=0, dtype="int32")


# ----------------------------------------------------------------------------- textures


def _fractal(rng: np.random.Generator, shape, octaves=5, base=4, persistence=0.55):
    """Smooth value noise in [0, 1] with detail at several scales."""
    h, w = shape
    out = np.zeros(shape, dtype=np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        n = base * 2**o
        grid = rng.random((n + 1, n + 1)).astype(np.float32)
        up = ndimage.zoom(grid, (h / (n + 1) + 1e-6, w / (n + 1) + 1e-6), order=1)
        out += amp * up[:h, :w]
        total += amp
        amp *= persistence
    out /= total
    lo, hi = np.percentile(out, (1, 99))
    return np.clip((out - lo) / max(hi - lo, 1e-6), 0, 1)


# ----------------------------------------------------------------------------- layout


@dataclass
class _Layout:
    roads: list[np.ndarray]
    road_axes: list[tuple[np.ndarray, np.ndarray, float]]  # (centre, direction, width)
    lots: list[dict]  # centre, angle, size, height, gable, colour, state
    trees: list[tuple[float, float, float]]
    flips: list[tuple[float, float, float]]  # land-cover patches (x, y, r)
    sites: list[np.ndarray]  # blocks developed between the dates (bare soil in the first)


def _layout(style: DomainStyle, rng: np.random.Generator, x0: float, y0: float, extent: float):
    """Roads, lots and buildings of one scene, in metres. ``(x0, y0)`` is the top-left."""
    cx, cy = x0 + extent / 2, y0 - extent / 2
    theta = rng.uniform(0, np.pi / 2)
    du = np.array([np.cos(theta), np.sin(theta)])
    dv = np.array([-np.sin(theta), np.cos(theta)])
    reach = extent * 0.75

    def lines():
        pos, out = -reach - rng.uniform(0, style.road_spacing[1]), []
        while pos < reach:
            out.append((pos, rng.uniform(*style.road_width)))
            pos += rng.uniform(*style.road_spacing)
        out.append((pos, rng.uniform(*style.road_width)))
        return out

    u_lines, v_lines = lines(), lines()
    roads, axes = [], []
    centre = np.array([cx, cy])
    for pos, width in u_lines:  # roads running along dv at u = pos
        c = centre + du * pos
        roads.append(_rect(*c, 2 * reach + 40, width, theta + np.pi / 2))
        axes.append((c, dv, width))
    for pos, width in v_lines:
        c = centre + dv * pos
        roads.append(_rect(*c, 2 * reach + 40, width, theta))
        axes.append((c, du, width))

    lots, sites = [], []
    setback = 2.0
    for (u0, w0), (u1, w1) in zip(u_lines[:-1], u_lines[1:], strict=True):
        for (v0, wv0), (v1, wv1) in zip(v_lines[:-1], v_lines[1:], strict=True):
            bu0, bu1 = u0 + w0 / 2 + setback, u1 - w1 / 2 - setback
            bv0, bv1 = v0 + wv0 / 2 + setback, v1 - wv1 / 2 - setback
            if bu1 - bu0 < 8 or bv1 - bv0 < 8:
                continue
            kind = rng.random()
            park = kind < style.park_share
            developed = not park and kind < style.park_share + style.development_share
            if developed:
                mid = centre + du * (bu0 + bu1) / 2 + dv * (bv0 + bv1) / 2
                sites.append(_rect(*mid, bu1 - bu0, bv1 - bv0, theta))
            # Lots along the longer side, two rows back to back when the block is deep.
            along_u = (bu1 - bu0) >= (bv1 - bv0)
            a0, a1, b0, b1 = (bu0, bu1, bv0, bv1) if along_u else (bv0, bv1, bu0, bu1)
            rows = 2 if (b1 - b0) > 2.2 * style.building_size[1] else 1
            depth = (b1 - b0) / rows
            pos = a0
            while pos < a1:
                lot_w = rng.uniform(*style.lot_width)
                if pos + lot_w > a1:
                    break
                for r in range(rows):
                    a_c, b_c = pos + lot_w / 2, b0 + depth * (r + 0.5)
                    uu, vv = (a_c, b_c) if along_u else (b_c, a_c)
                    p = centre + du * uu + dv * vv
                    if not (x0 - 20 < p[0] < x0 + extent + 20 and y0 - extent - 20 < p[1] < y0 + 20):
                        continue
                    length = min(rng.uniform(*style.building_size), depth - 2)
                    width = min(rng.uniform(*style.building_size) * 0.75, lot_w - 3)
                    if length < 4 or width < 4:
                        continue
                    angle = theta + (0 if along_u else np.pi / 2) + np.pi / 2
                    angle += np.deg2rad(rng.normal(0, style.rotation_jitter))
                    if park:
                        state = "park"
                    elif developed:
                        state = "new" if rng.random() < style.building_density else "empty"
                    elif rng.random() < style.building_density:
                        state = "demolished" if rng.random() < style.demolition_rate else "kept"
                    else:
                        state = "empty"
                    if state == "empty" and rng.random() < style.new_building_rate:
                        state = "new"
                    roof = int(rng.integers(len(style.roof_palette)))
                    colour = np.array(style.roof_palette[roof])
                    lots.append(
                        {
                            "centre": p + rng.normal(0, 0.8, 2),
                            "angle": angle,
                            "size": (length, width),
                            "height": rng.uniform(*style.building_height),
                            "gable": rng.random() < style.gable_share,
                            "colour": np.clip(colour * rng.uniform(0.88, 1.12, 3), 0, 1),
                            "roof": roof,
                            "state": state,
                        }
                    )
                pos += lot_w

    area = extent * extent
    n_trees = rng.poisson(style.tree_density * area)
    trees = [
        (x0 + rng.uniform(0, extent), y0 - rng.uniform(0, extent), rng.uniform(1.5, 4.0))
        for _ in range(n_trees)
    ]
    flips = [
        (x0 + rng.uniform(0, extent), y0 - rng.uniform(0, extent), rng.uniform(6, 16))
        for _ in range(style.landcover_changes)
    ]
    return _Layout(roads, axes, lots, trees, flips, sites)


# ----------------------------------------------------------------------------- rendering


def _pixel_xy(shape, transform):
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32) + 0.5
    x = transform.c + cols * transform.a + rows * transform.b
    y = transform.f + cols * transform.d + rows * transform.e
    return x, y


def _render_date(
    style: DomainStyle,
    layout: _Layout,
    buildings: list[dict],
    demolished: list[dict],
    rng: np.random.Generator,
    shape,
    transform,
    textures: dict,
    post: bool,
) -> np.ndarray:
    """Ground reflectance (3, H, W) in 0..1 for one date, before the sensor."""
    x, y = textures["xy"]
    veg = textures["veg"].copy()
    if post:
        for fx, fy, fr in layout.flips:  # bare soil <-> grass patches: not building change
            d = np.hypot(x - fx, y - fy)
            w = np.clip((fr - d) / 3.0, 0, 1)
            veg = veg * (1 - w) + (1 - veg) * w
    if layout.sites:  # construction sites: cleared in the first date, half regrown later
        site = _burn(layout.sites, shape, transform) > 0
        veg = np.where(site, veg * 0.5 if post else 0.0, veg)
    veg_rgb = np.array(style.vegetation_rgb_post if post else style.vegetation_rgb)
    tex = textures["fine"][None]
    img = veg[None] * veg_rgb[:, None, None] * (0.8 + 0.4 * tex) + (1 - veg[None]) * np.array(
        style.soil_rgb
    )[:, None, None] * (0.88 + 0.24 * tex)

    # Demolished buildings leave bright, disturbed soil (still a labelled change).
    if demolished:
        scar = _burn([_rect(*b["centre"], b["size"][0] + 2, b["size"][1] + 2, b["angle"])
                      for b in demolished], shape, transform) > 0
        img = np.where(scar[None], np.array(style.soil_rgb)[:, None, None] * 1.12
                       * (0.8 + 0.4 * textures["coarse"][None]), img)

    road = _burn(layout.roads, shape, transform) > 0
    road_rgb = np.array(style.road_rgb)[:, None, None] * (0.92 + 0.16 * textures["fine"][None])
    img = np.where(road[None], road_rgb, img)

    # Cars move between dates.
    cars, colours = [], []
    n_cars = rng.poisson(len(layout.road_axes) * 4)
    for _ in range(n_cars):
        c, d, w = layout.road_axes[rng.integers(len(layout.road_axes))]
        along = rng.uniform(-style.road_spacing[1] * 3, style.road_spacing[1] * 3)
        side = rng.choice([-1, 1]) * w / 4
        p = c + d * along + np.array([-d[1], d[0]]) * side
        cars.append(_rect(*p, 4.5, 1.9, np.arctan2(d[1], d[0])))
        colours.append(rng.choice([0.9, 0.15, 0.6, 0.75]) * np.array([1.0, 1.0, 1.0])
                       * rng.uniform(0.9, 1.1, 3))
    car_id = _burn(cars, shape, transform)
    if cars:
        lut = np.concatenate([np.zeros((1, 3)), np.array(colours)])
        img = np.where(car_id[None] > 0, lut[car_id].transpose(2, 0, 1), img)

    # Shadows of buildings and trees, away from the sun.
    az = np.deg2rad(style.sun_azimuth_post if post else style.sun_azimuth)
    away = -np.array([np.sin(az), np.cos(az)])
    shadows = []
    for b in buildings:
        fp = _rect(*b["centre"], *b["size"], b["angle"])
        shift = away * b["height"] * style.shadow_factor
        shadows.append(_hull(np.concatenate([fp, fp + shift])))
    for tx, ty, tr in layout.trees:
        shadows.append(_disc(tx, ty, tr) + away * tr * 1.6 * style.shadow_factor)
    shadow = _burn(shadows, shape, transform) > 0
    img = np.where(shadow[None], img * (1 - style.shadow_strength), img)

    # Trees: round crowns, lit on the sun side.
    tree_id = _burn([_disc(tx, ty, tr) for tx, ty, tr in layout.trees], shape, transform)
    if layout.trees:
        t = np.array(layout.trees)
        sel = tree_id > 0
        k = tree_id[sel] - 1
        dx, dy = x[sel] - t[k, 0], y[sel] - t[k, 1]
        lit = (dx * np.sin(az) + dy * np.cos(az)) / t[k, 2]
        shade = 0.75 + 0.3 * lit + 0.25 * textures["fine"][sel]
        crown = np.array(style.tree_rgb)[:, None] * shade[None]
        img[:, sel] = crown

    # Buildings: roof colour, ridge shading for gable roofs, a darker rim for flat ones.
    if buildings:
        bid = _burn([_rect(*b["centre"], *b["size"], b["angle"]) for b in buildings],
                    shape, transform)
        sel = bid > 0
        k = bid[sel] - 1
        cen = np.array([b["centre"] for b in buildings])
        ang = np.array([b["angle"] for b in buildings])
        half_w = np.array([b["size"][1] for b in buildings]) / 2
        half_l = np.array([b["size"][0] for b in buildings]) / 2
        gable = np.array([b["gable"] for b in buildings])
        col = np.array([b["colour"] for b in buildings])
        dx, dy = x[sel] - cen[k, 0], y[sel] - cen[k, 1]
        u = dx * np.cos(ang[k]) + dy * np.sin(ang[k])
        v = -dx * np.sin(ang[k]) + dy * np.cos(ang[k])
        normal_dot_sun = np.sign(v) * (-np.sin(ang[k]) * np.sin(az) + np.cos(ang[k]) * np.cos(az))
        gable_shade = 0.85 + 0.2 * normal_dot_sun
        rim = (np.abs(u) > half_l[k] - 0.7) | (np.abs(v) > half_w[k] - 0.7)
        flat_shade = np.where(rim, 0.78, 1.0)
        shade = np.where(gable[k], gable_shade, flat_shade) * (0.95 + 0.1 * textures["fine"][sel])
        img[:, sel] = col[k].T * shade[None]
    return np.clip(img, 0, 1)


def _sensor(img: np.ndarray, r: Radiometry, illumination: float) -> np.ndarray:
    out = np.einsum("ij,jhw->ihw", np.array(r.mix, dtype=np.float32), img * illumination)
    out = out * np.array(r.gain, dtype=np.float32)[:, None, None]
    out = r.haze * np.array(r.airlight, dtype=np.float32)[:, None, None] + (1 - r.haze) * out
    return np.clip(out, 0, 1) ** r.gamma


def _quantise(img: np.ndarray, r: Radiometry) -> np.ndarray:
    img = np.clip(img, 0, 1)
    if r.dtype == "uint8":
        return np.round(img * 255).astype(np.uint8)
    top = 2**r.bit_depth - 1
    return np.round(r.dark_level + img * (top - r.dark_level)).astype(np.uint16)


def generate_scene(style: DomainStyle | str, size: int = 512, seed: int = 0) -> SyntheticScene:
    """Generate one bi-temporal scene of ``size`` x ``size`` pixels.

    Returns arrays ``pre``/``post`` of shape (3, size, size) in the style's sensor dtype
    and ``label`` (size, size) uint8 with 1 where a building was built or demolished.
    """
    style = get_style(style) if isinstance(style, str) else style
    rng = np.random.default_rng([seed, zlib.crc32(style.name.encode())])
    shape = (size, size)
    extent = size * style.gsd
    # Scenes of one region sit on a grid of the same UTM zone, 10 km apart.
    x0 = 400_000.0 + 10_000.0 * (seed % 50)
    y0 = 5_000_000.0 + 10_000.0 * (seed // 50)
    transform = Affine(style.gsd, 0.0, x0, 0.0, -style.gsd, y0)

    layout = _layout(style, rng, x0, y0, extent)
    before = [b for b in layout.lots if b["state"] in ("kept", "demolished")]
    after = [b for b in layout.lots if b["state"] in ("kept", "new")]
    gone = [b for b in layout.lots if b["state"] == "demolished"]
    changed = [b for b in layout.lots if b["state"] in ("new", "demolished")]

    veg_field = _fractal(rng, shape, octaves=4, base=3)
    threshold = np.quantile(veg_field, 1 - style.vegetation_cover)
    textures = {
        "xy": _pixel_xy(shape, transform),
        "veg": np.clip((veg_field - threshold) / 0.06 + 0.5, 0, 1).astype(np.float32),
        "fine": _fractal(rng, shape, octaves=4, base=max(8, size // 16)),
        "coarse": _fractal(rng, shape, octaves=3, base=6),
    }
    pre = _render_date(style, layout, before, [], rng, shape, transform, textures, post=False)
    post = _render_date(style, layout, after, gone, rng, shape, transform, textures, post=True)

    r_pre = style.radiometry
    r_post = style.radiometry_post or style.radiometry
    pre = _sensor(pre, r_pre, 1.0)
    post = _sensor(post, r_post, style.illumination_post)
    shift = rng.uniform(-style.misregistration, style.misregistration, 2)
    images = []
    for img, r, dshift in ((pre, r_pre, (0.0, 0.0)), (post, r_post, tuple(shift))):
        if style.blur_sigma > 0:
            img = ndimage.gaussian_filter(img, (0, style.blur_sigma, style.blur_sigma))
        if any(dshift):
            img = ndimage.shift(img, (0, *dshift), order=1, mode="nearest")
        img = img + rng.normal(0, style.noise_std, img.shape).astype(np.float32)
        images.append(_quantise(img, r))

    footprints = [_rect(*b["centre"], *b["size"], b["angle"]) for b in changed]
    changes = _burn(footprints, shape, transform)
    label = (changes > 0).astype(np.uint8)
    info = {
        "buildings_pre": len(before),
        "buildings_post": len(after),
        "built": sum(b["state"] == "new" for b in layout.lots),
        "demolished": len(gone),
        "change_fraction": float(label.mean()),
        "misregistration_px": [float(s) for s in shift],
    }
    changed_info = [{"state": b["state"], "roof": b["roof"], "gable": bool(b["gable"]),
                     "size_m": [float(v) for v in b["size"]]} for b in changed]
    return SyntheticScene(images[0], images[1], label, transform, CRS.from_string(style.crs),
                          style, seed, info, changes, changed_info)


def write_geotiff(uri: str, array: np.ndarray, transform: Affine, crs: CRS, **profile) -> None:
    """Write a (bands, H, W) or (H, W) array as a tiled, compressed GeoTIFF, atomically."""
    array = array[None] if array.ndim == 2 else array
    prof = {
        "driver": "GTiff",
        "height": array.shape[1],
        "width": array.shape[2],
        "count": array.shape[0],
        "dtype": array.dtype.name,
        "crs": crs,
        "transform": transform,
        "compress": "deflate",
        "tiled": array.shape[1] >= 256 and array.shape[2] >= 256,
        **profile,
    }
    with storage.storage_for(uri).writing(uri, suffix=".tif") as tmp, rasterio.open(
        tmp, "w", **prof
    ) as dst:
        dst.write(array)


def scene_seed(region_seed: int, index: int) -> int:
    """The :func:`generate_scene` seed of scene ``index`` of a region written with
    ``region_seed``: regions with different seeds never share a scene."""
    return region_seed * 1000 + index


def write_region(
    out_uri: str,
    style: DomainStyle | str,
    n_scenes: int = 4,
    size: int = 512,
    seed: int = 0,
    labels_uri: str | None = None,
    quicklook_uri: str | None = None,
    progress: bool | None = None,
) -> dict:
    """Write a region as GeoTIFF pairs: ``pre/``, ``post/``, ``label/`` and ``region.json``.

    Labels go to ``labels_uri`` when given (ground truth kept apart from the imagery a
    pipeline sees), else to ``out_uri/label``. ``quicklook_uri`` gets a PNG of the first
    scene. Scene ``i`` is ``generate_scene(style, size, scene_seed(seed, i))``. Returns the
    region description that is also written to ``region.json``.
    """
    from tqdm.auto import tqdm

    from damnet.quicklook import save_png, side_by_side

    style = get_style(style) if isinstance(style, str) else style
    scenes = []
    bar = tqdm(range(n_scenes), desc=f"generate {style.name}", unit="scene",
               disable=None if progress is None else not progress)
    for i in bar:
        scene = generate_scene(style, size=size, seed=scene_seed(seed, i))
        name = f"scene_{i:03d}.tif"
        write_geotiff(storage.join(out_uri, "pre", name), scene.pre, scene.transform, scene.crs)
        write_geotiff(storage.join(out_uri, "post", name), scene.post, scene.transform, scene.crs)
        write_geotiff(storage.join(labels_uri or storage.join(out_uri, "label"), name),
                      scene.label * 255, scene.transform, scene.crs)
        if quicklook_uri and i == 0:
            save_png(quicklook_uri, side_by_side(scene.pre, scene.post, scene.label))
        scenes.append({"name": name, **scene.info})
    region = {
        "style": style.name,
        "description": style.description,
        "seed": seed,
        "size": size,
        "gsd": style.gsd,
        "crs": style.crs,
        "scenes": scenes,
        "style_parameters": style.to_dict(),
    }
    storage.storage_for(out_uri).put_text(storage.join(out_uri, "region.json"),
                                          json.dumps(region, indent=2))
    return region


def with_overrides(style: DomainStyle, **changes) -> DomainStyle:
    """A copy of ``style`` with some factors changed (for ablations of single factors)."""
    return replace(style, **changes)
