"""Scene geometry, view culling, textures, camera and bird's-eye view."""

from __future__ import annotations

import numpy as np
import pybullet as p
import pytest

from envs.maps.highway import HighwayMapConfig, generate_highway
from envs.render.bev import BirdEyeView, BoxAgent
from envs.sim import textures
from envs.sim.camera import CameraConfig, EgoCamera
from envs.sim.scene import Scene, SceneConfig, SemanticClass, build_atlas, build_geometry


@pytest.fixture(scope="module")
def highway() -> tuple:
    return generate_highway(HighwayMapConfig(), 2)


def test_markings_are_their_own_geometry(highway: tuple) -> None:
    road, _ = highway
    geo = build_geometry(road, SceneConfig(), np.random.default_rng(0))
    paint = [c for c in geo.cells if c.cls == SemanticClass.LANE_MARKING]
    assert paint
    # Dashes: each quad is one dash, LINE_WIDTH wide and DASH_LENGTH long (or a solid piece).
    v = paint[0].vertices.reshape(-1, 4, 3)
    widths = np.linalg.norm(v[:, 1] - v[:, 0], axis=1)
    lengths = np.linalg.norm(v[:, 3] - v[:, 0], axis=1)
    assert np.allclose(widths, textures.LINE_WIDTH_M, atol=0.02)
    assert np.any(np.isclose(lengths, textures.DASH_LENGTH_M, atol=0.05))
    assert {c.cls for c in geo.cells} >= {SemanticClass.ROAD, SemanticClass.LANE_MARKING,
                                          SemanticClass.STATIC, SemanticClass.OTHER}


def test_geometry_is_deterministic_and_complete(highway: tuple) -> None:
    road, _ = highway
    a = build_geometry(road, SceneConfig(), np.random.default_rng(3))
    b = build_geometry(road, SceneConfig(), np.random.default_rng(3))
    assert np.array_equal(a.atlas, b.atlas)
    assert len(a.cells) == len(b.cells) > 20
    assert all(np.array_equal(x.vertices, y.vertices) for x, y in zip(a.cells, b.cells,
                                                                      strict=True))
    assert a.colliders, "barriers and objects must collide"
    # Every lane point lies in some cell's footprint.
    centres = np.array([c.centre for c in a.cells])
    for lane in road.lanes:
        d = np.abs(lane.centre[::50, None, :] - centres[None, :, :]).max(axis=2)
        assert np.all(d.min(axis=1) <= SceneConfig().cell_m / 2 + 1e-6)


def test_atlas_rects_inside_unit_square() -> None:
    atlas, rects = build_atlas(np.random.default_rng(0))
    assert atlas.dtype == np.uint8 and atlas.ndim == 3
    for u0, v0, u1, v1 in rects.values():
        assert 0 <= u0 < u1 <= 1 and 0 <= v0 < v1 <= 1


def test_view_culling_bounds_body_count(highway: tuple) -> None:
    road, _ = highway
    c = p.connect(p.DIRECT)
    try:
        cfg = SceneConfig()
        scene = Scene(c, build_geometry(road, cfg, np.random.default_rng(0)), cfg)
        base = p.getNumBodies(physicsClientId=c)
        lane = road.lane("main/f0")
        for s in (100.0, 900.0, 1700.0):
            x, y = lane.position(s)
            scene.update_visibility(float(x), float(y), float(lane.heading_at(s)))
            shown = p.getNumBodies(physicsClientId=c) - base
            assert 0 < shown == scene.num_visible_cells < len(scene.geometry.cells) / 3
            rel = scene.cell_centres[scene._visible] - (x, y)
            assert np.hypot(rel[:, 0], rel[:, 1]).max() <= cfg.view_distance_m + cfg.cell_m
    finally:
        p.disconnect(c)


def test_camera_sees_road_ahead(highway: tuple) -> None:
    road, _ = highway
    c = p.connect(p.DIRECT)
    try:
        cfg = SceneConfig()
        scene = Scene(c, build_geometry(road, cfg, np.random.default_rng(0)), cfg)
        lane = road.lane("main/f1")
        x, y = lane.position(500.0)
        yaw = float(lane.heading_at(500.0))
        scene.update_visibility(float(x), float(y), yaw)
        cam = EgoCamera(c, CameraConfig(width=64, height=48))
        img = cam.render(float(x), float(y), 0.0, yaw).rgb
        assert img.shape == (48, 64, 3) and img.dtype == np.uint8
        bottom = img[-10:].astype(float)
        assert abs(bottom[..., 0].mean() - bottom[..., 2].mean()) < 20  # grey asphalt
        assert np.array_equal(img, cam.render(float(x), float(y), 0.0, yaw).rgb)
    finally:
        p.disconnect(c)


def test_bev_draws_road_and_agents(highway: tuple) -> None:
    road, _ = highway
    bev = BirdEyeView(road, 128, 0.5)
    lane = road.lane("main/f1")
    x, y = lane.position(300.0)
    yaw = float(lane.heading_at(300.0))
    img = bev.render(float(x), float(y), yaw, [BoxAgent(float(x), float(y), yaw, 4.5, 1.8,
                                                        (230, 40, 40))])
    assert img.shape == (128, 128, 3)
    assert tuple(img[64, 64]) == (230, 40, 40)  # the ego at the centre
    assert (np.abs(img.astype(int) - (92, 92, 96)).sum(axis=2) < 10).mean() > 0.1  # road
    assert bev.overview(200).shape == (200, 200, 3)
