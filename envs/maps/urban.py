"""Procedural urban grid maps: signalised intersections, crosswalks, parked cars, buildings.

The generator draws, from one seed, the block lengths of every column and row of a
rectangular street grid (so the grid is irregular) and the number of lanes per
direction of every street. Every pair of neighbouring intersections is joined by a
two-way road segment; every intersection is a junction with connector lanes for the
permitted turns and one traffic signal per approach lane. Connectors are straight
lines or, for turns, a straight lead, a circular arc and a straight tail; their road is
the junction id and their station their own arc length. At every junction the
approaches take turns (split phasing): green, amber, all-red, then the next approach.
Kerbs (the block outlines with rounded corners, and the outline of the whole grid) are
the map's barriers.

Layout of an arm (seen from the junction centre, along the arm):

* the *core* is the crossing street's carriageway (kerb to kerb), followed by the kerb
  corner radius ``corner_radius_m``: there the exit lanes start;
* then a gap of ``crosswalk_gap_m``, the crosswalk (``crosswalk_m`` wide), and another
  ``stop_gap_m``: there is the stop line, where the approach lanes end.

So a crosswalk lies on the first metres of the exit lanes (and on the first metres of
the connectors leaving the stop line), and traffic held at the stop line waits before
it. The junction polygon covers the core, the kerb corners and the approach halves of
the arms up to the stop lines: every connector lies inside it.

Cross-section of a street with ``n`` lanes per direction (offsets from the centre
line): lanes ``0 .. n*w``, a parking strip up to the kerb at ``n*w + parking_m``, then
the sidewalk (``sidewalk_m``) and the building setback.

Coordinates: x east, y north [m]; intersection (0, 0) at the origin. Ids:

* roads: ``h{i}_{j}`` joins intersections (i, j) -> (i+1, j) (eastwards);
  ``v{i}_{j}`` joins (i, j) -> (i, j+1) (northwards). The road station is the distance
  from the first intersection's centre along the road.
* lanes: ``{road}/f{k}`` run east / north (station increasing), ``{road}/b{k}`` run
  west / south (station decreasing); ``k = 0`` is next to the centre line.
* junctions: ``j{i}_{j}``; arms ``E N W S``; connectors
  ``j{i}_{j}/{arm_in}{k}-{arm_out}{m}`` (from approach lane ``k`` of arm ``arm_in`` to
  exit lane ``m`` of arm ``arm_out``); signals ``j{i}_{j}/sig/{arm}{k}``; crosswalks
  ``j{i}_{j}/cw/{arm}``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from common.config import require
from envs.maps.geometry import FloatArray, arc_length
from envs.maps.road_map import (
    Crosswalk,
    Junction,
    Lane,
    Marking,
    RoadMap,
    RouteCommand,
    Signal,
    StaticObject,
)
from envs.maps.route import Route, RouteSegment

#: Arm names by arm index (0 east, 1 north, 2 west, 3 south) and their outward unit vectors.
ARMS = "ENWS"
_ARM_DIR = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
_TURN_COMMAND = {"left": RouteCommand.LEFT, "right": RouteCommand.RIGHT,
                 "straight": RouteCommand.STRAIGHT}


@dataclass(frozen=True)
class UrbanMapConfig:
    """Parameters of the procedural urban grid generator.

    Attributes:
        blocks_x / blocks_y: Blocks per row / column; the grid has
            (blocks_x + 1) x (blocks_y + 1) intersections.
        block_length_m: Range of the distance between neighbouring intersection centres,
            drawn per grid column and per grid row [m].
        lanes_min / lanes_max: Range of lanes per direction, drawn per street (a whole
            grid line, so straight connections always match lane for lane).
        lane_width_m: Lane width [m].
        parking_m: Parking strip between the outer lane and the kerb [m].
        sidewalk_m: Sidewalk width behind the kerb [m].
        corner_radius_m: Kerb corner radius at the junctions [m].
        crosswalk_m: Width of a crosswalk (along the road) [m].
        crosswalk_gap_m: Gap between the end of the kerb corner and the crosswalk [m].
        stop_gap_m: Gap between the stop line and the crosswalk [m].
        speed_limit_mps: Speed limit on roads and straight connectors [m/s].
        turn_speed_limit_mps: Speed limit on turning connectors [m/s].
        green_s: Range of green time per approach, drawn per junction and approach [s].
        amber_s: Range of the amber time, drawn per junction [s].
        all_red_s: Range of the all-red clearance after each amber, per junction [s].
        parked_car_prob: Probability that a block side has parked cars.
        parked_car_fill: Probability that a parking slot on such a side is taken.
        parked_car_size_m: Parked-car length, width, height [m].
        buildings: Whether blocks are filled with buildings.
        building_setback_m: Distance between the sidewalk and the buildings [m].
        building_height_m: Range of building heights [m].
        buildings_per_block: Range of buildings per block (at most 4).
        trees_per_side: Mean number of trees per block side (Poisson).
        pole_spacing_m: Spacing of street-light poles along each block side [m]
            (0: none).
        station_step_m: Sampling step of road lanes [m].
        connector_step_m: Sampling step of connector lanes [m].
    """

    blocks_x: int = 3
    blocks_y: int = 3
    block_length_m: tuple[float, float] = (80.0, 120.0)
    lanes_min: int = 1
    lanes_max: int = 2
    lane_width_m: float = 3.5
    parking_m: float = 2.5
    sidewalk_m: float = 3.0
    corner_radius_m: float = 5.0
    crosswalk_m: float = 3.0
    crosswalk_gap_m: float = 0.5
    stop_gap_m: float = 1.0
    speed_limit_mps: float = 13.9
    turn_speed_limit_mps: float = 6.0
    green_s: tuple[float, float] = (8.0, 14.0)
    amber_s: tuple[float, float] = (3.0, 4.0)
    all_red_s: tuple[float, float] = (1.0, 2.0)
    parked_car_prob: float = 0.5
    parked_car_fill: float = 0.6
    parked_car_size_m: tuple[float, float, float] = (4.5, 1.8, 1.5)
    buildings: bool = True
    building_setback_m: float = 2.0
    building_height_m: tuple[float, float] = (8.0, 30.0)
    buildings_per_block: tuple[int, int] = (2, 4)
    trees_per_side: float = 1.5
    pole_spacing_m: float = 30.0
    station_step_m: float = 2.0
    connector_step_m: float = 1.0

    @property
    def mouth_m(self) -> float:
        """Distance from the end of a kerb corner to the stop line [m]."""
        return self.crosswalk_gap_m + self.crosswalk_m + self.stop_gap_m

    def __post_init__(self) -> None:
        require(1 <= self.blocks_x <= 10, f"map.blocks_x must be in [1, 10], got {self.blocks_x}")
        require(1 <= self.blocks_y <= 10, f"map.blocks_y must be in [1, 10], got {self.blocks_y}")
        require(1 <= self.lanes_min <= self.lanes_max <= 4,
                f"map: need 1 <= lanes_min <= lanes_max <= 4, got {self.lanes_min}, "
                f"{self.lanes_max}")
        require(2.5 <= self.lane_width_m <= 5.0,
                f"map.lane_width_m must be in [2.5, 5], got {self.lane_width_m}")
        require(self.parking_m >= 0.0, "map.parking_m must be >= 0")
        require(self.sidewalk_m >= 1.0, "map.sidewalk_m must be >= 1")
        require(2.0 <= self.corner_radius_m <= 15.0, "map.corner_radius_m must be in [2, 15]")
        require(self.crosswalk_m > 0.0 and self.crosswalk_gap_m >= 0.0 and self.stop_gap_m >= 0.0,
                "map: crosswalk_m must be > 0, crosswalk_gap_m and stop_gap_m >= 0")
        half = self.lanes_max * self.lane_width_m + self.parking_m
        shortest = 2.0 * (half + self.corner_radius_m + self.mouth_m) + 20.0
        lo, hi = self.block_length_m
        require(shortest <= lo <= hi,
                f"map.block_length_m must be an increasing range with minimum >= {shortest:.1f} m "
                f"(junctions plus 20 m of road), got {self.block_length_m}")
        require(self.speed_limit_mps > 0.0, "map.speed_limit_mps must be > 0")
        require(0.0 < self.turn_speed_limit_mps <= self.speed_limit_mps,
                "map.turn_speed_limit_mps must be in (0, speed_limit_mps]")
        require(0.0 < self.green_s[0] <= self.green_s[1],
                "map.green_s must be an increasing range of positive times")
        require(0.0 < self.amber_s[0] <= self.amber_s[1],
                "map.amber_s must be an increasing range of positive times")
        require(0.0 <= self.all_red_s[0] <= self.all_red_s[1],
                "map.all_red_s must be an increasing range of non-negative times")
        require(0.0 <= self.parked_car_prob <= 1.0, "map.parked_car_prob must be in [0, 1]")
        require(0.0 <= self.parked_car_fill <= 1.0, "map.parked_car_fill must be in [0, 1]")
        require(min(self.parked_car_size_m) > 0.0, "map.parked_car_size_m must be positive")
        if self.parked_car_prob > 0.0:
            require(self.parking_m >= self.parked_car_size_m[1] + 0.4,
                    "map.parking_m must be >= parked car width + 0.4 m when parked_car_prob > 0")
        require(self.building_setback_m >= 0.0, "map.building_setback_m must be >= 0")
        require(0.0 < self.building_height_m[0] <= self.building_height_m[1],
                "map.building_height_m must be an increasing range of positive heights")
        require(1 <= self.buildings_per_block[0] <= self.buildings_per_block[1] <= 4,
                "map.buildings_per_block must be an increasing range within [1, 4]")
        require(self.trees_per_side >= 0.0, "map.trees_per_side must be >= 0")
        require(self.pole_spacing_m == 0.0 or self.pole_spacing_m >= 5.0,
                "map.pole_spacing_m must be 0 (none) or >= 5")
        require(0.5 <= self.station_step_m <= 5.0, "map.station_step_m must be in [0.5, 5]")
        require(0.2 <= self.connector_step_m <= 2.0, "map.connector_step_m must be in [0.2, 2]")


@dataclass(frozen=True)
class UrbanLayout:
    """Facts about a generated urban grid that the env, traffic and scene may need.

    Attributes:
        xs_m / ys_m: Intersection x of every grid column / y of every grid row [m].
        block_x_m / block_y_m: Distances between neighbouring intersections [m].
        lanes_h: Lanes per direction of every horizontal street (grid row j).
        lanes_v: Lanes per direction of every vertical street (grid column i).
        junction_centres: Junction id -> centre (x, y) [m].
        junction_arms: Junction id -> its arm names, a subset of ``"ENWS"``.
        approach_lanes: Every road lane (each ends at a stop line, with a signal).
        approach_junction: Road lane id -> the junction at its end.
        connectors: Every connector lane id.
        signal_cycle_s: Junction id -> signal cycle length [s].
        kerb_offset_m: Road id -> distance from its centre line to either kerb [m].
        blocks: Kerb outline of every block, (4, 2) corners counter-clockwise [m]
            (the kerb corners are rounded with ``corner_radius_m``).
        speed_limit_mps: Road speed limit [m/s].
    """

    xs_m: FloatArray
    ys_m: FloatArray
    block_x_m: FloatArray
    block_y_m: FloatArray
    lanes_h: tuple[int, ...]
    lanes_v: tuple[int, ...]
    junction_centres: dict[str, tuple[float, float]]
    junction_arms: dict[str, str]
    approach_lanes: tuple[str, ...]
    approach_junction: dict[str, str]
    connectors: tuple[str, ...]
    signal_cycle_s: dict[str, float]
    kerb_offset_m: dict[str, float]
    blocks: tuple[FloatArray, ...]
    speed_limit_mps: float


@dataclass
class _Arm:
    """One arm of a junction during generation."""

    index: int  # 0 E, 1 N, 2 W, 3 S
    half_m: float  # kerb offset of the arm's street [m]
    exit_m: float  # distance of the exit lanes' start from the centre [m]
    stop_m: float  # distance of the stop line from the centre [m]
    approach: list[str]  # approach lane ids, k = 0 innermost
    exits: list[str]  # exit lane ids, k = 0 innermost


def _connector_curve(p0: FloatArray, d0: FloatArray, p3: FloatArray, d1: FloatArray,
                     step: float) -> FloatArray:
    """Centre line from ``p0`` (unit direction ``d0``) to ``p3`` (unit direction ``d1``) [m].

    Straight when the directions agree; otherwise a straight lead, a circular arc and a
    straight tail (headings continuous, curvature piecewise constant). The arc is as
    wide as the shorter of the two legs to the tangent lines' intersection allows, so
    a right turn from the kerb lane runs concentric with the kerb corner. Points are
    spaced at most ``step`` metres apart by arc length, with extra points 0.25 m from
    both ends so that the polyline's end headings match ``d0`` and ``d1`` closely.
    """
    cross = float(d0[0] * d1[1] - d0[1] * d1[0])
    if abs(cross) < 1e-9:
        length = float(np.linalg.norm(p3 - p0))
        n = max(int(math.ceil(length / step)), 1)
        t = np.linspace(0.0, 1.0, n + 1)[:, None]
        return np.asarray(p0 + t * (p3 - p0))
    # p0 + a d0 = p3 - b d1: the corner where the two tangent lines meet.
    a, b = np.linalg.solve(np.column_stack([d0, d1]), p3 - p0)
    theta = math.atan2(cross, float(d0 @ d1))  # signed turn, left positive [rad]
    tangent = float(min(a, b))
    radius = tangent / math.tan(abs(theta) / 2.0)
    lead, tail = float(a) - tangent, float(b) - tangent
    arc = radius * abs(theta)
    length = lead + arc + tail
    n = max(int(math.ceil(length / step)), 2)
    s = np.linspace(0.0, length, n + 1)
    if length / n > 0.5:
        s = np.concatenate([[0.0, 0.25], s[1:-1], [length - 0.25, length]])
    sign = 1.0 if theta > 0.0 else -1.0
    normal = sign * np.array([-d0[1], d0[0]])  # from the lead towards the arc centre
    arc_start = p0 + lead * d0
    centre = arc_start + radius * normal
    phi = np.clip(s - lead, 0.0, arc)[:, None] / radius  # angle turned so far [rad]
    on_arc = centre - radius * np.cos(phi) * normal + radius * np.sin(phi) * d0
    pts = np.where((s < lead)[:, None], p0 + s[:, None] * d0, on_arc)
    after = s > lead + arc
    pts[after] = p3 - (length - s[after])[:, None] * d1
    pts[0], pts[-1] = p0, p3
    return np.asarray(pts)


def _connections(arms: dict[int, _Arm]) -> list[tuple[int, int, int, int, str]]:
    """Connector endpoints (arm in, lane in, arm out, lane out, turn) of one junction.

    Straight from every lane to the same lane; left from the leftmost lane into the
    leftmost exit lane; right from the rightmost into the rightmost. A lane left without
    any connection (where there is no straight exit, e.g. at a grid corner) turns too,
    and an exit lane left without any is fed from the approach lane that feeds its
    nearest neighbour, so that every lane has a predecessor and a successor.
    """
    out: list[tuple[int, int, int, int, str]] = []
    for a, arm in sorted(arms.items()):
        n = len(arm.approach)
        conn: dict[int, list[tuple[int, int, str]]] = {k: [] for k in range(n)}
        turns = {t: (a + d) % 4 for t, d in (("left", 3), ("straight", 2), ("right", 1))}
        exist = {t: e for t, e in turns.items() if e in arms}
        if "straight" in exist:
            e = exist["straight"]
            for k in range(min(n, len(arms[e].exits))):
                conn[k].append((e, k, "straight"))
        if "left" in exist:
            conn[0].append((exist["left"], 0, "left"))
        if "right" in exist:
            e = exist["right"]
            conn[n - 1].append((e, len(arms[e].exits) - 1, "right"))
        for k in range(n):
            if conn[k] or not exist:
                continue
            want = "left" if k < n / 2.0 else "right"
            turn = want if want in exist else next(iter(exist))
            e = exist[turn]
            m = len(arms[e].exits)
            k_out = min(k, m - 1) if turn == "left" else max(m - n + k, 0)
            conn[k].append((e, k_out, turn))
        for k in range(n):
            out += [(a, k, e, m, turn) for e, m, turn in conn[k]]
    # Exit lanes nothing leads into (at grid corners and T-junctions) are fed by the
    # connection into the nearest exit lane of the same arm, from the same approach lane.
    for e, arm in sorted(arms.items()):
        into = [c for c in out if c[2] == e]
        fed = {c[3] for c in into}
        for m in range(len(arm.exits)):
            if m not in fed and into:
                a, k, _, _, turn = min(into, key=lambda c: (abs(c[3] - m), c[0], c[1]))
                out.append((a, k, e, m, turn))
    order = {"left": 0, "straight": 1, "right": 2}
    return sorted(out, key=lambda c: (c[0], c[1], order[c[4]], c[3]))


def generate_urban(cfg: UrbanMapConfig, seed: int) -> tuple[RoadMap, UrbanLayout]:
    """Generate an urban grid map from ``seed``.

    Args:
        cfg: Generator parameters.
        seed: Map seed; the same seed always gives the same map.

    Returns:
        The map and its layout facts.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x55524241]))
    bx, by = cfg.blocks_x, cfg.blocks_y
    block_x = rng.uniform(*cfg.block_length_m, size=bx)
    block_y = rng.uniform(*cfg.block_length_m, size=by)
    lanes_v = rng.integers(cfg.lanes_min, cfg.lanes_max + 1, size=bx + 1)
    lanes_h = rng.integers(cfg.lanes_min, cfg.lanes_max + 1, size=by + 1)
    xs = np.concatenate([[0.0], np.cumsum(block_x)])
    ys = np.concatenate([[0.0], np.cumsum(block_y)])
    w = cfg.lane_width_m
    half_v = lanes_v * w + cfg.parking_m  # kerb offsets of the vertical streets
    half_h = lanes_h * w + cfg.parking_m
    r = cfg.corner_radius_m

    lanes: list[Lane] = []
    # Junction (i, j) -> arm index -> arm facts, filled while the roads are laid out.
    arms: dict[tuple[int, int], dict[int, _Arm]] = {
        (i, j): {} for i in range(bx + 1) for j in range(by + 1)}
    kerb_offset: dict[str, float] = {}
    segments: list[tuple[str, FloatArray, FloatArray, float, int, float, float]] = []

    def add_road(road: str, node_a: tuple[int, int], node_b: tuple[int, int], axis: int) -> None:
        # axis 0: eastwards (arm E at node_a, W at node_b); axis 1: northwards (N / S).
        u = _ARM_DIR[axis]
        nrm = np.array([-u[1], u[0]])
        start = np.array([xs[node_a[0]], ys[node_a[1]]])
        length = float(block_x[node_a[0]] if axis == 0 else block_y[node_a[1]])
        n = int(lanes_h[node_a[1]] if axis == 0 else lanes_v[node_a[0]])
        # The crossing street's kerb offset at either end sets where the junction stops.
        cross_a = float(half_v[node_a[0]] if axis == 0 else half_h[node_a[1]])
        cross_b = float(half_v[node_b[0]] if axis == 0 else half_h[node_b[1]])
        exit_a, exit_b = cross_a + r, cross_b + r
        stop_a, stop_b = exit_a + cfg.mouth_m, exit_b + cfg.mouth_m
        kerb = n * w + cfg.parking_m
        kerb_offset[road] = kerb
        ids: dict[str, list[str]] = {"f": [], "b": []}
        for direction, lo, hi in (("f", exit_a, length - stop_b), ("b", stop_a, length - exit_b)):
            num = max(int(math.ceil((hi - lo) / cfg.station_step_m)), 1) + 1
            st = np.linspace(lo, hi, num)
            for k in range(n):
                side = -1.0 if direction == "f" else 1.0
                pts = start + st[:, None] * u + side * (k + 0.5) * w * nrm
                station = st
                if direction == "b":
                    pts, station = pts[::-1], st[::-1]
                lane_id = f"{road}/{direction}{k}"
                ids[direction].append(lane_id)
                lanes.append(Lane(
                    id=lane_id, road=road, centre=pts, width=np.full(num, w), station=station,
                    speed_limit_mps=cfg.speed_limit_mps,
                    left_marking=Marking.SOLID if k == 0 else Marking.DASHED,
                    right_marking=Marking.SOLID if k == n - 1 else Marking.DASHED,
                    left=f"{road}/{direction}{k - 1}" if k > 0 else None,
                    right=f"{road}/{direction}{k + 1}" if k < n - 1 else None,
                ))
        half = float(kerb)
        arms[node_a][axis] = _Arm(axis, half, exit_a, stop_a, approach=ids["b"], exits=ids["f"])
        arms[node_b][axis + 2] = _Arm(axis + 2, half, exit_b, stop_b, approach=ids["f"],
                                      exits=ids["b"])
        segments.append((road, start, u, length, n, stop_a, stop_b))

    for j in range(by + 1):
        for i in range(bx):
            add_road(f"h{i}_{j}", (i, j), (i + 1, j), 0)
    for i in range(bx + 1):
        for j in range(by):
            add_road(f"v{i}_{j}", (i, j), (i, j + 1), 1)

    index = {ln.id: ln for ln in lanes}
    junctions: list[Junction] = []
    signals: list[Signal] = []
    crosswalks: list[Crosswalk] = []
    connectors: list[Lane] = []
    centres: dict[str, tuple[float, float]] = {}
    arm_names: dict[str, str] = {}
    cycles: dict[str, float] = {}
    approach_junction: dict[str, str] = {}
    for j in range(by + 1):
        for i in range(bx + 1):
            jid = f"j{i}_{j}"
            centre = np.array([xs[i], ys[j]])
            here = arms[(i, j)]
            centres[jid] = (float(centre[0]), float(centre[1]))
            arm_names[jid] = "".join(ARMS[a] for a in sorted(here))
            conn_ids: list[str] = []
            for a, k, e, m, turn in _connections(here):
                src, dst = index[here[a].approach[k]], index[here[e].exits[m]]
                pts = _connector_curve(src.centre[-1], -_ARM_DIR[a], dst.centre[0], _ARM_DIR[e],
                                       cfg.connector_step_m)
                cid = f"{jid}/{ARMS[a]}{k}-{ARMS[e]}{m}"
                conn_ids.append(cid)
                connectors.append(Lane(
                    id=cid, road=jid, centre=pts, width=np.full(len(pts), w),
                    station=arc_length(pts),
                    speed_limit_mps=(cfg.speed_limit_mps if turn == "straight"
                                     else cfg.turn_speed_limit_mps),
                    left_marking=Marking.NONE, right_marking=Marking.NONE, kind="connector",
                    turn=turn, junction=jid, successors=[dst.id], predecessors=[src.id],
                ))
                src.successors.append(cid)
                dst.predecessors.append(cid)
            junctions.append(Junction(jid, _junction_polygon(centre, here, float(half_v[i]),
                                                             float(half_h[j]), r),
                                      tuple(conn_ids)))
            # Signals: split phasing. Each approach in turn gets green, then amber and an
            # all-red clearance, so no two flows through the junction ever cross (turning
            # traffic needs no gap acceptance; pedestrians are yielded to).
            greens = rng.uniform(*cfg.green_s, size=len(here))
            amber = float(rng.uniform(*cfg.amber_s))
            clear = float(rng.uniform(*cfg.all_red_s))
            cycle = float(greens.sum() + len(here) * (amber + clear))
            start = float(rng.uniform(0.0, cycle))
            cycles[jid] = cycle
            starts = start + np.concatenate([[0.0], np.cumsum(greens + amber + clear)[:-1]])
            for slot, (a, arm) in enumerate(sorted(here.items())):
                u = _ARM_DIR[a]
                nrm = np.array([-u[1], u[0]])
                green = float(greens[slot])
                offset = float(starts[slot])
                head = centre + arm.stop_m * u + (arm.half_m + 0.5) * nrm
                for k, lane_id in enumerate(arm.approach):
                    ln = index[lane_id]
                    approach_junction[lane_id] = jid
                    signals.append(Signal(
                        id=f"{jid}/sig/{ARMS[a]}{k}", junction=jid, lane=lane_id,
                        stop_line=ln.position(np.array([ln.length, ln.length]),
                                              np.array([w / 2.0, -w / 2.0])),
                        head_xy=(float(head[0]), float(head[1])),
                        head_yaw=float(math.atan2(u[1], u[0])),
                        green_s=green, amber_s=amber, red_s=cycle - green - amber,
                        offset_s=float(offset % cycle),
                    ))
                r0 = arm.exit_m + cfg.crosswalk_gap_m
                r1 = r0 + cfg.crosswalk_m
                mid = centre + 0.5 * (r0 + r1) * u
                poly = np.stack([centre + r0 * u - arm.half_m * nrm,
                                 centre + r1 * u - arm.half_m * nrm,
                                 centre + r1 * u + arm.half_m * nrm,
                                 centre + r0 * u + arm.half_m * nrm])
                a_pt, b_pt = mid - arm.half_m * nrm, mid + arm.half_m * nrm
                crosswalks.append(Crosswalk(
                    id=f"{jid}/cw/{ARMS[a]}", junction=jid, polygon=poly,
                    start=(float(a_pt[0]), float(a_pt[1])), end=(float(b_pt[0]), float(b_pt[1]))))

    blocks = tuple(np.array([[xs[i] + half_v[i], ys[j] + half_h[j]],
                             [xs[i + 1] - half_v[i + 1], ys[j] + half_h[j]],
                             [xs[i + 1] - half_v[i + 1], ys[j + 1] - half_h[j + 1]],
                             [xs[i] + half_v[i], ys[j + 1] - half_h[j + 1]]])
                   for j in range(by) for i in range(bx))
    barriers = [_rounded_rect(b, r) for b in blocks]
    lo = np.array([xs[0] - half_v[0], ys[0] - half_h[0]])
    hi = np.array([xs[-1] + half_v[-1], ys[-1] + half_h[-1]])
    barriers.append(np.array([lo, [hi[0], lo[1]], hi, [lo[0], hi[1]], lo]))
    objects = _street_objects(cfg, rng, segments)
    if cfg.buildings:
        objects += _buildings(cfg, rng, blocks)

    layout = UrbanLayout(
        xs_m=xs, ys_m=ys, block_x_m=block_x, block_y_m=block_y,
        lanes_h=tuple(int(n) for n in lanes_h), lanes_v=tuple(int(n) for n in lanes_v),
        junction_centres=centres, junction_arms=arm_names,
        approach_lanes=tuple(ln.id for ln in lanes), approach_junction=approach_junction,
        connectors=tuple(c.id for c in connectors), signal_cycle_s=cycles,
        kerb_offset_m=kerb_offset, blocks=blocks, speed_limit_mps=cfg.speed_limit_mps,
    )
    road_map = RoadMap([*lanes, *connectors], name=f"urban-{seed}", barriers=barriers,
                       objects=objects, shoulders=(0.0, cfg.parking_m), junctions=junctions,
                       signals=signals, crosswalks=crosswalks)
    return road_map, layout


def _corner_arc(corner: FloatArray, u_p: FloatArray, u_q: FloatArray, r: float) -> FloatArray:
    """Kerb arc of radius ``r`` around the block corner ``corner``, from the kerb along
    ``u_p`` to the kerb along ``u_q`` (8 points) [m]."""
    centre = corner + r * (u_p + u_q)
    ang = np.linspace(0.0, 0.5 * np.pi, 8)[:, None]
    return centre - r * np.cos(ang) * u_q - r * np.sin(ang) * u_p


def _junction_polygon(centre: FloatArray, arms: dict[int, _Arm], half_v: float, half_h: float,
                      r: float) -> FloatArray:
    """Junction area, counter-clockwise: the core, the kerb corners where two arms meet,
    and for each arm its exit half up to the exit-lane start and its approach half up to
    the stop line."""
    pts: list[FloatArray] = []
    for a in range(4):
        u = _ARM_DIR[a]
        nrm = np.array([-u[1], u[0]])
        width = half_h if a in (0, 2) else half_v  # half width of arm a's street
        if a in arms:
            arm = arms[a]
            pts += [centre + arm.exit_m * u - width * nrm, centre + arm.exit_m * u,
                    centre + arm.stop_m * u, centre + arm.stop_m * u + width * nrm]
        q = (a + 1) % 4
        width_q = half_h if q in (0, 2) else half_v
        corner = centre + width_q * u + width * _ARM_DIR[q]
        if a in arms and q in arms:
            pts += list(_corner_arc(corner, u, _ARM_DIR[q], r))
        else:
            pts.append(corner)
    poly = np.array(pts)
    keep = np.ones(len(poly), dtype=bool)
    keep[1:] = np.linalg.norm(np.diff(poly, axis=0), axis=1) > 1e-9
    return poly[keep]


def _rounded_rect(corners: FloatArray, r: float) -> FloatArray:
    """Closed polyline around a counter-clockwise rectangle with corners rounded by ``r``."""
    pts: list[FloatArray] = []
    for k in range(4):
        c = corners[k]
        to_prev = corners[k - 1] - c
        to_next = corners[(k + 1) % 4] - c
        u_prev = to_prev / np.linalg.norm(to_prev)
        u_next = to_next / np.linalg.norm(to_next)
        # The arc around the rectangle corner, from the previous side to the next.
        centre = c + r * (u_prev + u_next)
        ang = np.linspace(0.0, 0.5 * np.pi, 8)[:, None]
        pts += list(centre - r * np.cos(ang) * u_next - r * np.sin(ang) * u_prev)
    pts.append(pts[0])
    return np.array(pts)


def _street_objects(cfg: UrbanMapConfig, rng: np.random.Generator,
                    segments: list[tuple[str, FloatArray, FloatArray, float, int, float, float]]
                    ) -> list[StaticObject]:
    """Parked cars in the parking strips, street-light poles and trees on the sidewalks.

    Everything stays between the stop lines of the two ends of a road (plus a margin),
    so that no object stands on a crosswalk, a kerb corner or in a junction.
    """
    objects: list[StaticObject] = []
    car_l, car_w, car_h = cfg.parked_car_size_m
    slot = car_l + 1.5
    w = cfg.lane_width_m
    for _, start, u, length, n, stop_a, stop_b in segments:
        nrm = np.array([-u[1], u[0]])
        lo, hi = stop_a + 3.0, length - stop_b - 3.0
        heading = math.atan2(u[1], u[0])
        kerb = n * w + cfg.parking_m
        for side in (-1.0, 1.0):  # -1: right of the forward lanes, +1: the other side
            yaw = heading if side < 0 else heading + math.pi
            yaw = math.atan2(math.sin(yaw), math.cos(yaw))
            if rng.random() < cfg.parked_car_prob:
                count = int((hi - lo) // slot)
                first = lo + 0.5 * ((hi - lo) - count * slot) + 0.5 * slot
                taken = rng.random(count) < cfg.parked_car_fill
                jitter = rng.uniform(-0.1, 0.1, size=count)
                for k in np.flatnonzero(taken):
                    st = float(first + k * slot)
                    p = start + st * u + side * (n * w + 0.5 * cfg.parking_m + jitter[k]) * nrm
                    objects.append(StaticObject("parked_car", float(p[0]), float(p[1]), yaw,
                                                (car_l, car_w, car_h)))
            poles: list[float] = []
            if cfg.pole_spacing_m > 0.0:
                phase = rng.uniform(0.0, cfg.pole_spacing_m)
                poles = [float(q) for q in np.arange(lo + phase, hi, cfg.pole_spacing_m)]
                for st in poles:
                    p = start + st * u + side * (kerb + 0.5) * nrm
                    objects.append(StaticObject("pole", float(p[0]), float(p[1]), yaw,
                                                (0.25, 0.25, 7.0)))
            crown_max = min(3.0, cfg.sidewalk_m)
            for st in np.sort(rng.uniform(lo, hi, size=int(rng.poisson(cfg.trees_per_side)))):
                if poles and min(abs(st - q) for q in poles) < 3.0:
                    continue
                crown = float(rng.uniform(0.6 * crown_max, crown_max))
                p = start + st * u + side * (kerb + 0.5 * cfg.sidewalk_m) * nrm
                objects.append(StaticObject("tree", float(p[0]), float(p[1]),
                                            float(rng.uniform(0.0, np.pi)),
                                            (crown, crown, float(rng.uniform(5.0, 9.0)))))
    return objects


def _buildings(cfg: UrbanMapConfig, rng: np.random.Generator,
               blocks: tuple[FloatArray, ...]) -> list[StaticObject]:
    """2-4 box buildings per block, filling it behind the sidewalk and setback."""
    gap = 3.0
    out: list[StaticObject] = []
    inset = cfg.sidewalk_m + cfg.building_setback_m
    for block in blocks:
        x0, y0 = block[0] + inset
        x1, y1 = block[2] - inset
        if x1 - x0 < 6.0 or y1 - y0 < 6.0:
            continue
        count = int(rng.integers(cfg.buildings_per_block[0], cfg.buildings_per_block[1] + 1))
        cells = [(x0, y0, x1, y1)]
        # Split the largest cell across its longer side until there are `count` cells.
        while len(cells) < count:
            areas = [(c[2] - c[0]) * (c[3] - c[1]) for c in cells]
            cx0, cy0, cx1, cy1 = cells.pop(int(np.argmax(areas)))
            f = float(rng.uniform(0.35, 0.65))
            if cx1 - cx0 >= cy1 - cy0:
                xm = cx0 + f * (cx1 - cx0)
                cells += [(cx0, cy0, xm - gap / 2, cy1), (xm + gap / 2, cy0, cx1, cy1)]
            else:
                ym = cy0 + f * (cy1 - cy0)
                cells += [(cx0, cy0, cx1, ym - gap / 2), (cx0, ym + gap / 2, cx1, cy1)]
        for cx0, cy0, cx1, cy1 in cells:
            height = float(rng.uniform(*cfg.building_height_m))
            out.append(StaticObject("building", float((cx0 + cx1) / 2), float((cy0 + cy1) / 2),
                                    0.0, (float(cx1 - cx0), float(cy1 - cy0), height)))
    return out


def sample_route(road_map: RoadMap, rng: np.random.Generator, min_junctions: int = 3,
                 max_junctions: int | None = None, start_lane: str | None = None,
                 start_s_m: tuple[float, float] = (6.0, 12.0),
                 end_fraction: tuple[float, float] = (0.3, 0.7),
                 max_tries: int = 50) -> Route:
    """Draw a route through several junctions by a random walk on the lane graph.

    The route starts near the beginning of a random road lane (or ``start_lane``),
    follows successors only (no lane changes), takes a random connector at every
    junction and ends part-way along the road lane after the last junction. It never
    returns to a road or a junction it has already used (so no U-turns and no loops,
    which keeps :meth:`Route.distance` unambiguous). Road segments carry ``LANE_FOLLOW``, connector
    segments ``LEFT`` / ``RIGHT`` / ``STRAIGHT`` by their turn.

    Args:
        road_map: A map with connector lanes (e.g. from :func:`generate_urban`).
        rng: Random generator (the only source of randomness).
        min_junctions / max_junctions: Range of junctions to pass through (the count is
            drawn uniformly; ``max_junctions`` defaults to ``min_junctions``).
        start_lane: Road lane to start on (default: drawn among all non-connector lanes).
        start_s_m: Range of the start arc length on the first lane [m] (at most half
            the lane). The default starts a car just past the crosswalk that covers
            the first metres of every road lane of a default map.
        end_fraction: Range of the end position on the last lane, as a fraction of
            its length.
        max_tries: Walks to try before giving up (a walk fails at a dead end).

    Returns:
        The route.

    Raises:
        ValueError: When ``start_lane`` is unknown or a connector, or no walk reaches the
            requested number of junctions.
    """
    hi = min_junctions if max_junctions is None else max_junctions
    if not 0 <= min_junctions <= hi:
        raise ValueError(f"need 0 <= min_junctions <= max_junctions, got {min_junctions}, {hi}")
    if start_lane is not None and (start_lane not in road_map.lane_index
                                   or road_map.lane(start_lane).kind == "connector"):
        raise ValueError(f"start_lane {start_lane!r} is not a road lane of this map")
    starts = [ln.id for ln in road_map.lanes if ln.kind != "connector"]
    for _ in range(max_tries):
        lane = road_map.lane(start_lane if start_lane is not None
                             else starts[int(rng.integers(len(starts)))])
        target = int(rng.integers(min_junctions, hi + 1))
        s_from = min(float(rng.uniform(*start_s_m)), 0.5 * lane.length)
        segments: list[RouteSegment] = []
        passed = 0
        ok = True
        # Never back onto a road or through a junction already on the route, so that
        # route distances stay unambiguous (this also rules out U-turns).
        visited = {lane.road}
        # Walk until `target` connectors were entered, then on through the last junction.
        while (passed < target or lane.kind == "connector") and len(segments) < 20 * (target + 1):
            options = [nxt for nxt in lane.successors if _fresh(road_map, nxt, visited)]
            if not options:
                ok = False
                break
            segments.append(RouteSegment(lane.id, s_from, lane.length, _command(lane)))
            lane = road_map.lane(options[int(rng.integers(len(options)))])
            visited.add(lane.road)
            s_from = 0.0
            passed += lane.kind == "connector"
        s_end = float(rng.uniform(*end_fraction)) * lane.length
        if not ok or passed < target or lane.kind == "connector" or s_end <= s_from:
            continue
        segments.append(RouteSegment(lane.id, s_from, s_end, RouteCommand.LANE_FOLLOW))
        return Route(road_map, segments)
    raise ValueError(f"no route through {min_junctions} junctions found in {max_tries} tries "
                     f"on map {road_map.name}")


def _command(lane: Lane) -> RouteCommand:
    """Route command on a whole lane: the turn of a connector, else lane follow."""
    if lane.kind != "connector":
        return RouteCommand.LANE_FOLLOW
    return _TURN_COMMAND.get(lane.turn or "", RouteCommand.LANE_FOLLOW)


def _fresh(road_map: RoadMap, lane_id: str, visited: set[str]) -> bool:
    """Whether ``lane_id`` (and, for a connector, its exit lanes) avoids visited roads."""
    lane = road_map.lane(lane_id)
    if lane.road in visited:
        return False
    if lane.kind != "connector":
        return True
    return any(road_map.lane(after).road not in visited for after in lane.successors)
