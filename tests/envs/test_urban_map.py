"""Procedural urban grid maps: lane graph, junctions, signals, objects, routes."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from functools import cache

import numpy as np
import pytest

from common.config import ConfigError, from_dict
from envs.maps.geometry import FloatArray
from envs.maps.road_map import RoadMap, RouteCommand
from envs.maps.urban import UrbanLayout, UrbanMapConfig, generate_urban, sample_route

CFG = UrbanMapConfig()
SEEDS = (0, 1, 2)


@cache
def _map(seed: int) -> tuple[RoadMap, UrbanLayout]:
    return generate_urban(CFG, seed)


def _angle(a: float) -> float:
    return (a + math.pi) % (2.0 * math.pi) - math.pi


def _inside(poly: FloatArray, pts: FloatArray) -> FloatArray:
    """Even-odd point-in-polygon test for many points."""
    x, y = pts[:, 0][:, None], pts[:, 1][:, None]
    a, b = poly, np.roll(poly, -1, axis=0)
    crosses = (a[:, 1] > y) != (b[:, 1] > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        xc = a[:, 0] + (y - a[:, 1]) * (b[:, 0] - a[:, 0]) / (b[:, 1] - a[:, 1])
    return np.asarray((crosses & (x < xc)).sum(axis=1) % 2 == 1)


def _seg_distance(pts: FloatArray, a: FloatArray, b: FloatArray) -> FloatArray:
    """Distance of every point (N, 2) to the nearest of the segments a -> b (M, 2)."""
    ab = b - a
    ap = pts[:, None, :] - a[None]
    t = np.clip((ap * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12), 0.0, 1.0)
    return np.asarray(np.linalg.norm(ap - t[..., None] * ab, axis=-1).min(axis=1))


def _footprint(x: float, y: float, yaw: float, length: float, width: float,
               step: float) -> FloatArray:
    """Points on the outline of a box footprint, about ``step`` apart."""
    c, s = math.cos(yaw), math.sin(yaw)
    corners = np.array([[length, width], [-length, width], [-length, -width],
                        [length, -width]]) / 2.0
    pts = []
    for k in range(4):
        p, q = corners[k], corners[(k + 1) % 4]
        n = max(int(np.linalg.norm(q - p) / step), 1)
        pts.append(p + np.linspace(0.0, 1.0, n, endpoint=False)[:, None] * (q - p))
    local = np.concatenate(pts)
    return np.column_stack([x + c * local[:, 0] - s * local[:, 1],
                            y + s * local[:, 0] + c * local[:, 1]])


@pytest.mark.parametrize("seed", SEEDS)
def test_structure_and_counts(seed: int) -> None:
    road, layout = _map(seed)
    bx, by = CFG.blocks_x, CFG.blocks_y
    roads = [ln for ln in road.lanes if ln.kind != "connector"]
    connectors = [ln for ln in road.lanes if ln.kind == "connector"]
    assert len(road.junctions) == (bx + 1) * (by + 1)
    assert len(set(ln.road for ln in roads)) == bx * (by + 1) + by * (bx + 1)
    assert all(CFG.lanes_min <= n <= CFG.lanes_max for n in layout.lanes_h + layout.lanes_v)
    assert all(CFG.block_length_m[0] <= b <= CFG.block_length_m[1]
               for b in [*layout.block_x_m, *layout.block_y_m])
    # One signal per approach lane (every road lane ends at a junction), unique ids.
    assert len(road.signals) == len(roads) == len(layout.approach_lanes)
    assert sorted(s.lane for s in road.signals) == sorted(ln.id for ln in roads)
    assert len({s.id for s in road.signals}) == len(road.signals)
    # One crosswalk per arm; interior junctions have 4 arms, edges 3, corners 2.
    arms = Counter(len(a) for a in layout.junction_arms.values())
    assert arms == {4: (bx - 1) * (by - 1), 3: 2 * (bx - 1) + 2 * (by - 1), 2: 4}
    assert len(road.crosswalks) == sum(len(a) for a in layout.junction_arms.values())
    per_junction = Counter(cw.junction for cw in road.crosswalks)
    assert all(per_junction[j.id] == len(layout.junction_arms[j.id]) for j in road.junctions)
    assert sorted(c.id for c in connectors) == sorted(layout.connectors)
    assert sorted(c for j in road.junctions for c in j.connectors) == sorted(layout.connectors)
    for ln in roads:
        assert ln.speed_limit_mps == CFG.speed_limit_mps
        np.testing.assert_allclose(ln.width, CFG.lane_width_m)
        assert np.all(np.diff(ln.s) <= CFG.station_step_m + 1e-9)
    kinds = Counter(o.kind for o in road.objects)
    assert kinds["building"] >= CFG.buildings_per_block[0] * bx * by
    assert kinds["parked_car"] > 0 and kinds["tree"] > 0 and kinds["pole"] > 0
    assert road.name == f"urban-{seed}" and road.shoulders == (0.0, CFG.parking_m)


@pytest.mark.parametrize("seed", SEEDS)
def test_lane_graph(seed: int) -> None:
    road, _ = _map(seed)
    for ln in road.lanes:
        for nxt in ln.successors:
            assert ln.id in road.lane(nxt).predecessors
        for prev in ln.predecessors:
            assert ln.id in road.lane(prev).successors
        if ln.kind == "connector":
            assert len(ln.successors) == 1 and len(ln.predecessors) == 1
            assert ln.road == ln.junction and ln.left is None and ln.right is None
            src, dst = road.lane(ln.predecessors[0]), road.lane(ln.successors[0])
            assert np.linalg.norm(src.centre[-1] - ln.centre[0]) < 1e-9
            assert np.linalg.norm(ln.centre[-1] - dst.centre[0]) < 1e-9
            assert abs(_angle(src.heading[-1] - ln.heading[0])) < 0.03
            assert abs(_angle(ln.heading[-1] - dst.heading[0])) < 0.03
            assert np.max(np.diff(ln.s)) <= CFG.connector_step_m + 1e-9
            turn = _angle(ln.heading[-1] - ln.heading[0])
            expected = {"straight": 0.0, "left": math.pi / 2, "right": -math.pi / 2}[ln.turn]
            assert abs(turn - expected) < 0.05, (ln.id, turn)
            np.testing.assert_allclose(ln.station, ln.s)
            # Curvature stays drivable (radius > 4 m).
            assert np.max(np.abs(np.diff(ln.heading)) / np.diff(ln.s)) < 0.25
        else:
            # Every road lane leads into a junction and is reached from one: no dead ends.
            assert ln.successors and all(road.lane(c).kind == "connector" for c in ln.successors)
            assert ln.predecessors
            direction = np.sign(ln.station[-1] - ln.station[0])
            assert np.all(np.sign(np.diff(ln.station)) == direction)
            assert (direction > 0) == ("/f" in ln.id)
            k = int(ln.id[-1])
            assert (ln.left is None) == (k == 0)
            for side in (ln.left, ln.right):
                if side is not None:
                    other = road.lane(side)
                    assert other.road == ln.road
                    np.testing.assert_allclose(other.station, ln.station)
                    gap = np.linalg.norm(other.centre - ln.centre, axis=1)
                    np.testing.assert_allclose(gap, CFG.lane_width_m, atol=1e-9)
            if ln.right is not None:
                assert road.lane(ln.right).left == ln.id


def test_turn_lanes_at_four_way_junctions() -> None:
    road, layout = _map(0)
    for junction in road.junctions:
        if len(layout.junction_arms[junction.id]) != 4:
            continue
        by_turn: dict[str, set[str]] = {"left": set(), "right": set(), "straight": set()}
        for cid in junction.connectors:
            c = road.lane(cid)
            assert c.turn is not None
            src, dst = road.lane(c.predecessors[0]), road.lane(c.successors[0])
            by_turn[c.turn].add(src.id)
            if c.turn == "left":
                assert src.left is None and dst.left is None
            elif c.turn == "right":
                assert src.right is None and dst.right is None
            else:
                assert src.id[-1] == dst.id[-1] and src.road != dst.road
        approaches = {s.lane for s in road.signals if s.junction == junction.id}
        assert by_turn["straight"] == approaches
        assert len(by_turn["left"]) == len(by_turn["right"]) == 4


@pytest.mark.parametrize("seed", SEEDS)
def test_signal_phases(seed: int) -> None:
    road, layout = _map(seed)
    for junction in road.junctions:
        sigs = [s for s in road.signals if s.junction == junction.id]
        cycle = layout.signal_cycle_s[junction.id]
        assert all(abs(s.cycle_s - cycle) < 1e-9 for s in sigs)
        ns = [s for s in sigs if s.id.split("/")[-1][0] in "NS"]
        ew = [s for s in sigs if s.id.split("/")[-1][0] in "EW"]
        t = np.arange(0.0, 2.0 * cycle, 0.05)
        states = {s.id: np.array([s.state(float(x)) for x in t]) for s in sigs}
        green_ns = np.any([states[s.id] == 0 for s in ns], axis=0) if ns else np.zeros(len(t))
        green_ew = np.any([states[s.id] == 0 for s in ew], axis=0) if ew else np.zeros(len(t))
        assert not np.any(green_ns & green_ew), junction.id
        one_cycle = t < cycle
        for s in sigs:
            st = states[s.id][one_cycle]
            onsets = np.sum((st[1:] == 0) & (st[:-1] != 0)) + (st[0] == 0 and st[-1] != 0)
            assert onsets == 1, s.id
            assert set(st.tolist()) == {0, 1, 2}


@pytest.mark.parametrize("seed", SEEDS)
def test_signal_and_crosswalk_geometry(seed: int) -> None:
    road, layout = _map(seed)
    w = CFG.lane_width_m
    for s in road.signals:
        lane = road.lane(s.lane)
        end = lane.centre[-1]
        np.testing.assert_allclose(s.stop_line.mean(axis=0), end, atol=1e-9)
        assert abs(np.linalg.norm(s.stop_line[1] - s.stop_line[0]) - w) < 1e-9
        # The head stands beside the road, on the right, facing approaching traffic.
        head = np.asarray(s.head_xy)
        _, d = lane.project(head)
        assert d < -w / 2.0 - CFG.parking_m
        found = road.locate(head)
        assert found is None or abs(found.d) > w / 2.0
        assert math.cos(s.head_yaw - float(lane.heading[-1])) < -0.999
    for cw in road.crosswalks:
        assert cw.polygon.shape == (4, 2)
        start, end = np.asarray(cw.start), np.asarray(cw.end)
        road_id = next(ln.road for ln in road.lanes if ln.kind != "connector"
                       and _inside(cw.polygon, ln.centre).any())
        assert abs(np.linalg.norm(end - start) - 2.0 * layout.kerb_offset_m[road_id]) < 1e-9
        # Crosswalks lie on exit lanes; approach lanes end at a stop line before them.
        on = set()
        for t in np.linspace(0.0, 1.0, 41):
            lp = road.locate(start + t * (end - start))
            if lp is not None and road.lane(lp.lane).kind != "connector":
                on.add(lp.lane)
        centre = np.asarray(layout.junction_centres[cw.junction])
        assert on and all(np.linalg.norm(road.lane(x).centre[0] - centre)
                          < np.linalg.norm(road.lane(x).centre[-1] - centre) for x in on)
        for ln in road.lanes:
            if ln.kind != "connector" and ln.road == road_id:
                assert not _inside(cw.polygon, ln.centre[-1:]).any()


@pytest.mark.parametrize("seed", SEEDS)
def test_junction_polygons_hold_their_connectors(seed: int) -> None:
    road, layout = _map(seed)
    for junction in road.junctions:
        cx, cy = layout.junction_centres[junction.id]
        assert _inside(junction.polygon, np.array([[cx, cy]]))[0]
        for cid in junction.connectors:
            c = road.lane(cid)
            assert c.junction == junction.id
            assert _inside(junction.polygon, c.centre[1:-1]).all(), cid
        # Road lanes stay outside every junction (except their end points on its edge).
        for ln in road.lanes:
            if ln.kind != "connector":
                assert not _inside(junction.polygon, ln.centre[1:-1]).any()


@pytest.mark.parametrize("seed", SEEDS)
def test_objects_and_kerbs_clear_of_lanes(seed: int) -> None:
    road, _ = _map(seed)
    pts = np.concatenate([ln.centre for ln in road.lanes])
    for obj in road.objects:
        step = 2.0 if obj.kind == "building" else 0.5
        outline = _footprint(obj.x, obj.y, obj.yaw, obj.size[0], obj.size[1], step)
        for p in outline:
            lp = road.locate(p)
            assert lp is None or abs(lp.d) > CFG.lane_width_m / 2.0 + 0.1, (obj, lp)
        if obj.kind == "building":
            assert not _inside(outline, pts).any()
    # Kerbs (barriers) keep at least half a lane width plus 0.5 m from every centre line.
    a = np.concatenate([b[:-1] for b in road.barriers])
    b = np.concatenate([b[1:] for b in road.barriers])
    for ln in road.lanes:
        assert _seg_distance(ln.centre, a, b).min() > CFG.lane_width_m / 2.0 + 0.5, ln.id


def test_locate_points_on_lanes_and_connectors() -> None:
    road, _ = _map(4)
    rng = np.random.default_rng(0)
    junction_index = {j.id: k for k, j in enumerate(road.junctions)}
    exact = total = 0
    for lane in road.lanes:
        for s in rng.uniform(0.5, lane.length - 0.5, size=3):
            d = float(rng.uniform(-0.3, 0.3))
            point = lane.position(s, d)
            heading = float(lane.heading_at(s))
            found = road.locate(point, heading)
            assert found is not None
            if lane.kind != "connector":
                assert found.lane == lane.id and abs(found.s - s) < 0.05
                assert abs(found.d - d) < 1e-3
                continue
            # Connectors overlap (shared first metres, merges, crossings): where another
            # connector of the junction, in about the same direction, passes within 1 m,
            # either may be found; elsewhere the point's own lane must be.
            assert abs(found.d) <= road.lane(found.lane).width_at(found.s) / 2.0
            assert math.cos(found.heading - heading) > 0.9
            near = False
            for other_id in road.junctions[int(junction_index[lane.junction])].connectors:
                other = road.lane(other_id)
                if other_id == lane.id:
                    continue
                s_o, d_o = other.project(point)
                if abs(d_o) < abs(d) + 1.0 and math.cos(other.heading_at(s_o) - heading) > 0.5:
                    near = True
            total += not near
            exact += not near and found.lane == lane.id
    assert total > 100 and exact == total
    far = np.array([road.bounds[0][0] - 50.0, road.bounds[0][1] - 50.0])
    assert road.locate(far) is None


def test_same_seed_same_map_other_seed_differs() -> None:
    a, la = generate_urban(CFG, 11)
    b, lb = generate_urban(CFG, 11)
    c, lc = generate_urban(CFG, 12)
    assert [x.id for x in a.lanes] == [y.id for y in b.lanes]
    assert all(np.array_equal(x.centre, y.centre) for x, y in zip(a.lanes, b.lanes, strict=True))
    assert a.objects == b.objects
    assert [s.offset_s for s in a.signals] == [s.offset_s for s in b.signals]
    assert not np.array_equal(la.block_x_m, lc.block_x_m)
    np.testing.assert_array_equal(la.block_x_m, lb.block_x_m)


@pytest.mark.parametrize("seed", SEEDS)
def test_sample_route(seed: int) -> None:
    road, _ = _map(seed)
    rng = np.random.default_rng(seed)
    commands = {"left": RouteCommand.LEFT, "right": RouteCommand.RIGHT,
                "straight": RouteCommand.STRAIGHT}
    seen: set[RouteCommand] = set()
    for _ in range(20):
        route = sample_route(road, rng, min_junctions=3, max_junctions=5)
        segs = route.segments
        first = road.lane(segs[0].lane)
        assert first.kind != "connector" and 6.0 <= segs[0].s_start <= 12.0
        assert road.lane(segs[-1].lane).kind != "connector"
        assert 0.0 < segs[-1].s_end < road.lane(segs[-1].lane).length
        junctions = 0
        for prev, seg in itertools.pairwise(segs):
            p = road.lane(prev.lane)
            assert seg.lane in p.successors and abs(prev.s_end - p.length) < 1e-9
            assert seg.s_start == 0.0
            lane = road.lane(seg.lane)
            if lane.kind == "connector":
                junctions += 1
                assert lane.turn is not None and seg.command == commands[lane.turn]
                seen.add(seg.command)
                # Never back onto the road the route came from.
                assert road.lane(lane.successors[0]).road != p.road
            else:
                assert seg.command == RouteCommand.LANE_FOLLOW
        assert 3 <= junctions <= 5
        assert np.all(np.diff(route.offsets) > 0.0)
        # The distance to the next manoeuvre shrinks as the route is driven.
        dist = np.arange(0.0, route.length, 0.5)
        cmds = [route.next_command(float(x)) for x in dist]
        remaining = np.array([c[1] for c in cmds])
        same = np.array([a[0] == b[0] for a, b in itertools.pairwise(cmds)])
        assert np.all(np.diff(remaining)[same] < 0.0)
        assert np.all(remaining >= -1e-9)
        assert cmds[0][0] == RouteCommand.LANE_FOLLOW
        for k, seg in enumerate(segs):
            mid = 0.5 * (seg.s_start + seg.s_end)
            got = route.distance(seg.lane, mid)
            assert got is not None and abs(got - (route.offsets[k] + mid - seg.s_start)) < 1e-9
            assert route.next_command(float(route.offsets[k]) + 0.5 * seg.length)[0] == seg.command
    assert seen == {RouteCommand.LEFT, RouteCommand.RIGHT, RouteCommand.STRAIGHT}


def test_sample_route_from_given_lane() -> None:
    road, _ = _map(0)
    rng = np.random.default_rng(3)
    route = sample_route(road, rng, min_junctions=2, start_lane="h1_1/f0")
    assert route.segments[0].lane == "h1_1/f0"
    assert sum(road.lane(g.lane).kind == "connector" for g in route.segments) == 2
    with pytest.raises(ValueError, match="start_lane"):
        sample_route(road, rng, start_lane=road.junctions[0].connectors[0])
    a = sample_route(road, np.random.default_rng(9))
    b = sample_route(road, np.random.default_rng(9))
    assert a.segments == b.segments


def test_small_grid_and_single_lanes() -> None:
    cfg = from_dict(UrbanMapConfig, {"blocks_x": 1, "blocks_y": 2, "lanes_max": 1,
                                     "parked_car_prob": 1.0, "buildings": False})
    road, layout = generate_urban(cfg, 0)
    assert len(road.junctions) == 6 and layout.lanes_h == (1, 1, 1)
    assert not any(o.kind == "building" for o in road.objects)
    assert all(ln.successors for ln in road.lanes)
    route = sample_route(road, np.random.default_rng(0), min_junctions=4)
    assert sum(road.lane(g.lane).kind == "connector" for g in route.segments) == 4


@pytest.mark.parametrize(("data", "key"), [
    ({"blocks_x": 0}, "blocks_x"),
    ({"block_length_m": [120.0, 80.0]}, "block_length_m"),
    ({"block_length_m": [30.0, 40.0]}, "block_length_m"),
    ({"lanes_min": 2, "lanes_max": 1}, "lanes_min"),
    ({"parking_m": 1.0}, "parking_m"),
    ({"green_s": [0.0, 10.0]}, "green_s"),
    ({"parked_car_prob": 1.5}, "parked_car_prob"),
    ({"turn_speed_limit_mps": 20.0}, "turn_speed_limit_mps"),
    ({"station_step_m": 10.0}, "station_step_m"),
    ({"lane_widht_m": 3.5}, "unknown config key 'lane_widht_m'"),
])
def test_bad_config_is_rejected(data: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        from_dict(UrbanMapConfig, data)
