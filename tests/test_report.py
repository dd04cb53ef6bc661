"""The report's scale bars: true on the page, in metres, honest about degrees."""

from __future__ import annotations

import pytest

from components.report import model_name, short
from components.report_maps import scale_bar


def test_a_projected_tile_gets_a_round_length_in_metres_at_its_shown_size():
    # 512 px of 0.5 m shown 320 px wide: 0.8 m per page pixel; 100 m is 125 px.
    bar = scale_bar([0.5, 0, 400000, 0, -0.5, 5200000], "EPSG:32636", 5199872, 512, 320)
    assert bar is not None and bar["px"] == 125 and bar["label"] == "100 m" and bar["note"] == ""
    # A 64 px tile of 0.5 m shown at 128 px: 10 m is 40 px.
    assert scale_bar([0.5, 0, 0, 0, -0.5, 0], "EPSG:32636", 0, 64, 128)["label"] == "10 m"
    big = scale_bar([30, 0, 0, 0, -30, 0], "EPSG:32636", 0, 10000, 500)
    assert big["label"] == "100 km" and big["px"] == round(100_000 / (30 * 10000 / 500))


def test_feet_are_converted_to_metres():
    bar = scale_bar([1, 0, 0, 0, -1, 0], "EPSG:2263", 0, 1000, 1000)  # NY state plane, US feet
    assert bar["label"] == "100 m" and bar["px"] == round(100 / 0.3048006096)


def test_degrees_are_converted_at_the_tiles_latitude_and_say_so():
    # 1e-5 degree pixels at 60 N: 0.557 m east-west; at the equator 1.11 m.
    north = scale_bar([1e-5, 0, 10, 0, -1e-5, 60], "EPSG:4326", 60.0, 1000, 1000)
    equator = scale_bar([1e-5, 0, 10, 0, -1e-5, 0], "EPSG:4326", 0.0, 1000, 1000)
    assert north["label"] == "200 m" and north["px"] == pytest.approx(200 / 0.5566, abs=1)
    assert "latitude 60.00" in north["note"] and equator["px"] == pytest.approx(200 / 1.1132, abs=1)


def test_no_georeference_no_scale_bar():
    assert scale_bar(None, None, 0, 64, 128) is None
    assert scale_bar([1, 0, 0, 0, 1, 0], "EPSG:32636", 0, 64, 128) is None  # identity: pixel space


def test_models_and_paths_read_short():
    assert model_name("models:/damnet-newtown/3", "/s") == "damnet-newtown v3"
    assert short("/s/regions/x/model.pt", "/s") == "regions/x/model.pt"
    assert short("s3://other/x", "/s") == "s3://other/x"
