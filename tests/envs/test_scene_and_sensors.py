"""Scene geometry, view culling, textures, camera and bird's-eye view."""

from __future__ import annotations

import numpy as np
import pybullet as p
import pytest

from envs.maps.highway import HighwayMapConfig, generate_highway
from envs.render.bev import BirdEyeView, BoxAgent
from envs.sim import textures
from envs.sim.camera import CameraConfig, EgoCamera
from envs.sim.scene import (
    Scene,
    SceneConfig,
    SemanticClass,
    _MeshSet,
    build_atlas,
    build_geometry,
)


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


def test_box_corners_are_closed_form() -> None:
    # A 4 x 2 x 3 m box at (10, 5), base 1 m up, turned 90 degrees: its footprint spans
    # x in [9, 11] and y in [3, 7]; five faces (four sides and the top), each outward.
    _, rects = build_atlas(np.random.default_rng(0))
    meshes = _MeshSet(60.0, rects)
    names = meshes.tile_names
    meshes.boxes(np.array([[10.0, 5.0, 1.0, np.pi / 2, 4.0, 2.0, 3.0]]),
                 np.array([names.index("building")]), np.array([True]),
                 np.array([int(SemanticClass.STATIC)]))
    [(key, v, uv, nrm, idx)] = meshes.visual.meshes()
    assert key == (0, 0, int(SemanticClass.STATIC))
    assert v.shape == (20, 3) and idx.shape == (30,)
    assert np.allclose(v[:, :2].min(axis=0), [9.0, 3.0]) and np.allclose(
        v[:, :2].max(axis=0), [11.0, 7.0])
    assert np.allclose(sorted(set(np.round(v[:, 2], 9))), [1.0, 4.0])
    quad_normals = nrm[::4]
    assert np.allclose(quad_normals[4], [0.0, 0.0, 1.0])  # the top faces up
    centre = np.array([10.0, 5.0])
    for q in range(4):  # each side faces away from the box centre
        mid = v[4 * q:4 * q + 4, :2].mean(axis=0)
        assert np.dot(quad_normals[q, :2], mid - centre) > 0
    u0, v0, u1, v1 = rects["building"]
    assert np.allclose(uv.min(axis=0), [u0, v0]) and np.allclose(uv.max(axis=0), [u1, v1])
    [(_, cv, _, _, cidx)] = meshes.collision.meshes()
    assert np.array_equal(cv, v) and np.array_equal(cidx, idx)


def test_quads_keep_call_order_within_a_cell() -> None:
    # Two quads in one cell from two calls, and one in another cell: each cell's mesh
    # lists its quads in the order they were added, with indices 4 vertices apart.
    _, rects = build_atlas(np.random.default_rng(0))
    meshes = _MeshSet(10.0, rects)
    square = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    meshes.quads((square + [2.0, 2.0, 0.0])[None], "asphalt", cls=SemanticClass.ROAD)
    meshes.quads(np.stack([square + [15.0, 2.0, 0.0], square + [5.0, 5.0, 0.0]]), "asphalt",
                 cls=SemanticClass.ROAD)
    out = meshes.visual.meshes()
    assert [key for key, *_ in out] == [(0, 0, 1), (1, 0, 1)]
    _, v, _, _, idx = out[0]
    assert np.allclose(v[0], [2.0, 2.0, 0.0]) and np.allclose(v[4], [5.0, 5.0, 0.0])
    assert idx.tolist() == [0, 1, 2, 0, 2, 3, 4, 5, 6, 4, 6, 7]
    assert meshes.collision.meshes() == []


def test_near_lane_agrees_with_locate(highway: tuple) -> None:
    road, _ = highway
    rng = np.random.default_rng(0)
    lo, hi = road.bounds
    points = rng.uniform(lo - 30.0, hi + 30.0, size=(400, 2))
    # Half the points near the road, where the answer changes.
    lane = road.lanes[0]
    near = lane.position(rng.uniform(0.0, lane.length, 200), rng.uniform(-15.0, 15.0, 200))
    points = np.concatenate([points, near])
    expected = np.array([road.locate(q) is not None for q in points])
    assert expected.any() and not expected.all()
    assert np.array_equal(road.near_lane(points), expected)
    assert road.near_lane(np.zeros((0, 2))).shape == (0,)


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
