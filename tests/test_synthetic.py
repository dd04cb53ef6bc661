"""The synthetic domain-shift regions: determinism, alignment, and that styles really differ."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from scipy import ndimage

from damnet.synthetic import SOURCE_STYLE, STYLES, TARGET_STYLES, generate_scene, scene_seed, write_region


@pytest.fixture(scope="module")
def scenes():
    return {name: generate_scene(name, size=256, seed=7) for name in STYLES}


def test_at_least_three_target_styles():
    assert SOURCE_STYLE == "source"
    assert len(TARGET_STYLES) >= 3


@pytest.mark.parametrize("style", sorted(STYLES))
def test_same_seed_same_scene_other_seed_other_scene(style, scenes):
    again = generate_scene(style, size=256, seed=7)
    first = scenes[style]
    assert np.array_equal(first.pre, again.pre)
    assert np.array_equal(first.post, again.post)
    assert np.array_equal(first.label, again.label)
    other = generate_scene(style, size=256, seed=8)
    assert not np.array_equal(first.pre, other.pre)


@pytest.mark.parametrize("style", sorted(STYLES))
def test_scene_shapes_and_label_values(style, scenes):
    s = scenes[style]
    assert s.pre.shape == s.post.shape == (3, 256, 256)
    assert s.label.shape == (256, 256)
    assert set(np.unique(s.label)) <= {0, 1}
    assert s.label.any(), "every scene should contain some change"
    assert s.pre.dtype == np.dtype(STYLES[style].radiometry.dtype)


@pytest.mark.parametrize("style", sorted(STYLES))
def test_each_changed_building_is_described_where_the_label_is(style, scenes):
    """The per-building ground truth a miss analysis groups by agrees with the label."""
    s = scenes[style]
    assert np.array_equal(s.changes > 0, s.label == 1)
    assert len(s.changed) == s.info["built"] + s.info["demolished"] and s.changes.max() <= len(s.changed)
    assert {b["state"] for b in s.changed} <= {"new", "demolished"}
    assert all(0 <= b["roof"] < len(STYLES[style].roof_palette) for b in s.changed)
    # the largest changed building covers about its footprint in pixels
    k = int(np.bincount(s.changes.ravel())[1:].argmax()) + 1
    length, width = s.changed[k - 1]["size_m"]
    assert 0.7 < (s.changes == k).sum() * STYLES[style].gsd ** 2 / (length * width) < 1.15


@pytest.mark.parametrize("style", sorted(STYLES))
def test_label_marks_where_the_images_really_differ(style):
    s = generate_scene(style, size=384, seed=3)
    pre = s.pre.astype(np.float32)
    post = s.post.astype(np.float32)
    # Compare after a per-band normalisation, so sensor differences between dates cancel.
    for img in (pre, post):
        img -= img.mean(axis=(1, 2), keepdims=True)
        img /= img.std(axis=(1, 2), keepdims=True)
    diff = np.abs(post - pre).sum(0)
    inside = ndimage.binary_erosion(s.label, iterations=2)
    outside = ~ndimage.binary_dilation(s.label, iterations=3)
    assert diff[inside].mean() > 1.5 * diff[outside].mean()


def test_styles_shift_different_factors(scenes):
    src = scenes["source"]
    assert scenes["target_sensor"].pre.dtype == np.uint16
    assert src.pre.dtype == np.uint8
    # Ground resolution: the same kind of building covers far fewer pixels.
    def mean_blob(label):
        lab, n = ndimage.label(label)
        return label.sum() / max(n, 1)
    def blob(style):
        return np.mean([mean_blob(generate_scene(style, 384, s).label) for s in range(3)])
    big, small = blob("source"), blob("target_resolution")
    assert small < 0.5 * big
    # Season: the dry-season scene is browner (red above green on average) than the source.
    def red_minus_green(img):
        return float(img[0].astype(float).mean() - img[1].astype(float).mean())
    assert red_minus_green(scenes["target_season"].pre) > red_minus_green(src.pre) + 10
    # Radiometry: the other sensor's colour statistics are far from the source's.
    def stats(img):
        x = img.astype(np.float32) / (255 if img.dtype == np.uint8 else 2047)
        return np.concatenate([x.mean((1, 2)), x.std((1, 2))])
    assert np.abs(stats(scenes["target_sensor"].pre) - stats(src.pre)).max() > 0.05


def test_write_region_is_georeferenced_and_deterministic(tmp_path):
    a = write_region(str(tmp_path / "a"), "target_season", n_scenes=2, size=128, seed=5,
                     quicklook_uri=str(tmp_path / "ql.png"))
    b = write_region(str(tmp_path / "b"), "target_season", n_scenes=2, size=128, seed=5)
    assert json.loads((tmp_path / "a" / "region.json").read_text())["scenes"] == a["scenes"]
    assert a["scenes"] == b["scenes"]
    for name in ("scene_000.tif", "scene_001.tif"):
        with (rasterio.open(tmp_path / "a" / "pre" / name) as pre,
              rasterio.open(tmp_path / "a" / "label" / name) as label,
              rasterio.open(tmp_path / "b" / "post" / name) as post_b,
              rasterio.open(tmp_path / "a" / "post" / name) as post_a):
            assert pre.crs.to_string() == STYLES["target_season"].crs
            assert pre.transform == label.transform == post_a.transform
            assert abs(pre.transform.a - STYLES["target_season"].gsd) < 1e-9
            assert set(np.unique(label.read(1))) <= {0, 255}
            assert np.array_equal(post_a.read(), post_b.read())
    assert (tmp_path / "ql.png").stat().st_size > 1000


def test_written_scenes_can_be_regenerated_from_the_region_seed(tmp_path):
    # bench/misses.py regenerates a written test region's scenes to know each changed building
    region = write_region(str(tmp_path / "r"), "target_sensor", n_scenes=2, size=128, seed=7)
    other = write_region(str(tmp_path / "o"), "target_sensor", n_scenes=1, size=128, seed=8)
    for i, info in enumerate(region["scenes"]):
        scene = generate_scene("target_sensor", size=128, seed=scene_seed(7, i))
        with rasterio.open(tmp_path / "r" / "post" / info["name"]) as src:
            assert np.array_equal(src.read(), scene.post)
    assert other["scenes"][0] not in region["scenes"]
