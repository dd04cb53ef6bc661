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

The modules: :mod:`~damnet.synthetic.styles` (the domain styles), :mod:`~damnet.synthetic.scene`
(the procedural city and its rendering, :func:`generate_scene`) and
:mod:`~damnet.synthetic.region` (:func:`write_region`: GeoTIFF pairs and ``region.json``).
"""

from damnet.synthetic.region import scene_seed, write_geotiff, write_region
from damnet.synthetic.scene import SyntheticScene, generate_scene
from damnet.synthetic.styles import (
    SOURCE_STYLE,
    STYLES,
    TARGET_STYLES,
    DomainStyle,
    Radiometry,
    get_style,
)

__all__ = [
    "SOURCE_STYLE",
    "STYLES",
    "TARGET_STYLES",
    "DomainStyle",
    "Radiometry",
    "SyntheticScene",
    "generate_scene",
    "get_style",
    "scene_seed",
    "write_geotiff",
    "write_region",
]
