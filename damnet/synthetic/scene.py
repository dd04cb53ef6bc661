"""Generating one synthetic bi-temporal scene (:func:`generate_scene`).

A scene is drawn from a small procedural city: a rotated road grid, blocks split into lots,
buildings (gable or flat roofs) with shadows, trees, cars, and a ground of grass and bare
soil. Everything is deterministic in ``(style, seed)``: the scene's random generator is
drawn from in a fixed order (layout, textures, each date's rendering, then the sensor).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.features import rasterize
from scipy import ndimage

from damnet.synthetic.styles import DomainStyle, Radiometry, get_style


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


# ----------------------------------------------------------------------------- geometry


def _rect(centre: Sequence[float] | np.ndarray, size: Sequence[float], angle: float) -> np.ndarray:
    """Corners (4, 2) of a rectangle centred at ``centre`` (x, y), ``size`` (length, width), long side
    along ``angle`` (rad)."""
    length, width = size
    u = np.array([np.cos(angle), np.sin(angle)]) * length / 2
    v = np.array([-np.sin(angle), np.cos(angle)]) * width / 2
    c = np.array([centre[0], centre[1]])
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


@dataclass(frozen=True)
class _Frame:
    """The street grid of a scene: its centre (metres), the two street directions and the
    angle of ``du``; ``(x0, y0)`` is the scene's top-left and ``extent`` its side (metres)."""

    centre: np.ndarray
    du: np.ndarray
    dv: np.ndarray
    theta: float
    x0: float
    y0: float
    extent: float

    def inside(self, p: np.ndarray) -> bool:
        """Whether point ``p`` lies in the scene or within 20 m of it."""
        x0, y0, extent = self.x0, self.y0, self.extent
        return bool(x0 - 20 < p[0] < x0 + extent + 20 and y0 - extent - 20 < p[1] < y0 + 20)


def _road_lines(style: DomainStyle, rng: np.random.Generator, reach: float) -> list[tuple[float, float]]:
    """``(position, width)`` of the parallel roads of one direction, across ``[-reach, reach]``."""
    pos, out = -reach - rng.uniform(0, style.road_spacing[1]), []
    while pos < reach:
        out.append((pos, rng.uniform(*style.road_width)))
        pos += rng.uniform(*style.road_spacing)
    out.append((pos, rng.uniform(*style.road_width)))
    return out


def _roads(frame: _Frame, u_lines: list, v_lines: list,
           reach: float) -> tuple[list[np.ndarray], list[tuple[np.ndarray, np.ndarray, float]]]:
    """Road polygons and their axes ``(centre, direction, width)``."""
    roads, axes = [], []
    for pos, width in u_lines:  # roads running along dv at u = pos
        c = frame.centre + frame.du * pos
        roads.append(_rect(c, (2 * reach + 40, width), frame.theta + np.pi / 2))
        axes.append((c, frame.dv, width))
    for pos, width in v_lines:
        c = frame.centre + frame.dv * pos
        roads.append(_rect(c, (2 * reach + 40, width), frame.theta))
        axes.append((c, frame.du, width))
    return roads, axes


def _lot_state(style: DomainStyle, rng: np.random.Generator, park: bool, developed: bool) -> str:
    """park, empty, kept, demolished or new: what stands on a lot in the two dates."""
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
    return state


def _building(style: DomainStyle, rng: np.random.Generator, p: np.ndarray, lot_w: float, depth: float,
              angle: float, park: bool, developed: bool) -> dict | None:
    """The building of a lot centred at ``p`` facing ``angle`` (before jitter); None when the
    lot is too small for one."""
    length = min(rng.uniform(*style.building_size), depth - 2)
    width = min(rng.uniform(*style.building_size) * 0.75, lot_w - 3)
    if length < 4 or width < 4:
        return None
    angle += np.deg2rad(rng.normal(0, style.rotation_jitter))
    state = _lot_state(style, rng, park, developed)
    roof = int(rng.integers(len(style.roof_palette)))
    colour = np.array(style.roof_palette[roof])
    return {
        "centre": p + rng.normal(0, 0.8, 2),
        "angle": angle,
        "size": (length, width),
        "height": rng.uniform(*style.building_height),
        "gable": rng.random() < style.gable_share,
        "colour": np.clip(colour * rng.uniform(0.88, 1.12, 3), 0, 1),
        "roof": roof,
        "state": state,
    }


def _block(style: DomainStyle, rng: np.random.Generator, frame: _Frame, bu: tuple[float, float],
           bv: tuple[float, float]) -> tuple[list[dict], np.ndarray | None]:
    """The buildings of the block between ``bu`` and ``bv`` (street coordinates, setbacks
    taken) and its construction site polygon when it is developed between the dates."""
    (bu0, bu1), (bv0, bv1) = bu, bv
    kind = rng.random()
    park = kind < style.park_share
    developed = not park and kind < style.park_share + style.development_share
    site = None
    if developed:
        mid = frame.centre + frame.du * (bu0 + bu1) / 2 + frame.dv * (bv0 + bv1) / 2
        site = _rect(mid, (bu1 - bu0, bv1 - bv0), frame.theta)
    # Lots along the longer side, two rows back to back when the block is deep.
    along_u = (bu1 - bu0) >= (bv1 - bv0)
    a0, a1, b0, b1 = (bu0, bu1, bv0, bv1) if along_u else (bv0, bv1, bu0, bu1)
    rows = 2 if (b1 - b0) > 2.2 * style.building_size[1] else 1
    depth = (b1 - b0) / rows
    angle = frame.theta + (0 if along_u else np.pi / 2) + np.pi / 2
    lots = []
    pos = a0
    while pos < a1:
        lot_w = rng.uniform(*style.lot_width)
        if pos + lot_w > a1:
            break
        for r in range(rows):
            a_c, b_c = pos + lot_w / 2, b0 + depth * (r + 0.5)
            uu, vv = (a_c, b_c) if along_u else (b_c, a_c)
            p = frame.centre + frame.du * uu + frame.dv * vv
            if not frame.inside(p):
                continue
            lot = _building(style, rng, p, lot_w, depth, angle, park, developed)
            if lot is not None:
                lots.append(lot)
        pos += lot_w
    return lots, site


def _layout(style: DomainStyle, rng: np.random.Generator, x0: float, y0: float, extent: float) -> _Layout:
    """Roads, lots and buildings of one scene, in metres. ``(x0, y0)`` is the top-left."""
    theta = rng.uniform(0, np.pi / 2)
    frame = _Frame(np.array([x0 + extent / 2, y0 - extent / 2]), np.array([np.cos(theta), np.sin(theta)]),
                   np.array([-np.sin(theta), np.cos(theta)]), theta, x0, y0, extent)
    reach = extent * 0.75
    u_lines = _road_lines(style, rng, reach)
    v_lines = _road_lines(style, rng, reach)
    roads, axes = _roads(frame, u_lines, v_lines, reach)

    lots, sites = [], []
    setback = 2.0
    for (u0, w0), (u1, w1) in zip(u_lines[:-1], u_lines[1:], strict=True):
        for (v0, wv0), (v1, wv1) in zip(v_lines[:-1], v_lines[1:], strict=True):
            bu = (u0 + w0 / 2 + setback, u1 - w1 / 2 - setback)
            bv = (v0 + wv0 / 2 + setback, v1 - wv1 / 2 - setback)
            if bu[1] - bu[0] < 8 or bv[1] - bv[0] < 8:
                continue
            block, site = _block(style, rng, frame, bu, bv)
            lots += block
            if site is not None:
                sites.append(site)

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


def _ground(style: DomainStyle, layout: _Layout, shape, transform, textures: dict, post: bool) -> np.ndarray:
    """Vegetation and bare soil (3, H, W): land-cover flips and construction sites included."""
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
    return veg[None] * veg_rgb[:, None, None] * (0.8 + 0.4 * tex) + (1 - veg[None]) * np.array(
        style.soil_rgb
    )[:, None, None] * (0.88 + 0.24 * tex)


def _cars(style: DomainStyle, layout: _Layout, rng: np.random.Generator, img: np.ndarray,
          shape, transform) -> np.ndarray:
    """``img`` with cars drawn on the roads (they move between dates)."""
    cars, colours = [], []
    n_cars = rng.poisson(len(layout.road_axes) * 4)
    for _ in range(n_cars):
        c, d, w = layout.road_axes[rng.integers(len(layout.road_axes))]
        along = rng.uniform(-style.road_spacing[1] * 3, style.road_spacing[1] * 3)
        side = rng.choice([-1, 1]) * w / 4
        p = c + d * along + np.array([-d[1], d[0]]) * side
        cars.append(_rect(p, (4.5, 1.9), np.arctan2(d[1], d[0])))
        colours.append(rng.choice([0.9, 0.15, 0.6, 0.75]) * np.array([1.0, 1.0, 1.0])
                       * rng.uniform(0.9, 1.1, 3))
    car_id = _burn(cars, shape, transform)
    if cars:
        lut = np.concatenate([np.zeros((1, 3)), np.array(colours)])
        img = np.where(car_id[None] > 0, lut[car_id].transpose(2, 0, 1), img)
    return img


def _shadows(style: DomainStyle, layout: _Layout, buildings: list[dict], away: np.ndarray, img: np.ndarray,
             shape, transform) -> np.ndarray:
    """``img`` darkened where buildings and trees cast shadows in direction ``away``."""
    shadows = []
    for b in buildings:
        fp = _rect(b["centre"], b["size"], b["angle"])
        shift = away * b["height"] * style.shadow_factor
        shadows.append(_hull(np.concatenate([fp, fp + shift])))
    for tx, ty, tr in layout.trees:
        shadows.append(_disc(tx, ty, tr) + away * tr * 1.6 * style.shadow_factor)
    shadow = _burn(shadows, shape, transform) > 0
    return np.where(shadow[None], img * (1 - style.shadow_strength), img)


def _trees(style: DomainStyle, layout: _Layout, az: float, img: np.ndarray, shape, transform,
           textures: dict) -> None:
    """Draw the trees into ``img``: round crowns, lit on the sun side (azimuth ``az``, rad)."""
    tree_id = _burn([_disc(tx, ty, tr) for tx, ty, tr in layout.trees], shape, transform)
    if not layout.trees:
        return
    x, y = textures["xy"]
    t = np.array(layout.trees)
    sel = tree_id > 0
    k = tree_id[sel] - 1
    dx, dy = x[sel] - t[k, 0], y[sel] - t[k, 1]
    lit = (dx * np.sin(az) + dy * np.cos(az)) / t[k, 2]
    shade = 0.75 + 0.3 * lit + 0.25 * textures["fine"][sel]
    crown = np.array(style.tree_rgb)[:, None] * shade[None]
    img[:, sel] = crown


def _roofs(buildings: list[dict], az: float, img: np.ndarray, shape, transform, textures: dict) -> None:
    """Draw the buildings into ``img``: roof colour, ridge shading for gable roofs, a darker
    rim for flat ones."""
    if not buildings:
        return
    x, y = textures["xy"]
    bid = _burn([_rect(b["centre"], b["size"], b["angle"]) for b in buildings], shape, transform)
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
    img = _ground(style, layout, shape, transform, textures, post)
    # Demolished buildings leave bright, disturbed soil (still a labelled change).
    if demolished:
        scar = _burn([_rect(b["centre"], (b["size"][0] + 2, b["size"][1] + 2), b["angle"])
                      for b in demolished], shape, transform) > 0
        img = np.where(scar[None], np.array(style.soil_rgb)[:, None, None] * 1.12
                       * (0.8 + 0.4 * textures["coarse"][None]), img)

    road = _burn(layout.roads, shape, transform) > 0
    road_rgb = np.array(style.road_rgb)[:, None, None] * (0.92 + 0.16 * textures["fine"][None])
    img = np.where(road[None], road_rgb, img)
    img = _cars(style, layout, rng, img, shape, transform)
    # Shadows of buildings and trees, away from the sun.
    az = np.deg2rad(style.sun_azimuth_post if post else style.sun_azimuth)
    img = _shadows(style, layout, buildings, -np.array([np.sin(az), np.cos(az)]), img, shape, transform)
    _trees(style, layout, az, img, shape, transform, textures)
    _roofs(buildings, az, img, shape, transform, textures)
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

    footprints = [_rect(b["centre"], b["size"], b["angle"]) for b in changed]
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
