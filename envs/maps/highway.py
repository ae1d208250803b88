"""Procedural highway maps: a divided carriageway with curves and an on-ramp merge.

The generator draws, from one seed, a reference line (the centre of the median) made
of straights and clothoid-arc-clothoid curves, the number of lanes per direction, the
speed limit and the position of an on-ramp on the forward carriageway. Every lane is a
lateral offset of the reference line, sampled at shared stations, so lanes of the
road ``main`` can be mapped onto each other by station.

Lane ids: ``main/f{k}`` forward lanes (k = 0 next to the median), ``main/b{k}``
backward lanes, ``main/acc`` the acceleration lane, ``ramp/r0`` the on-ramp.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.config import require
from envs.maps.geometry import FloatArray, integrate_curvature, offset_polyline, smoothstep5
from envs.maps.road_map import Lane, Marking, RoadMap, StaticObject


@dataclass(frozen=True)
class HighwayMapConfig:
    """Parameters of the procedural highway generator.

    Attributes:
        length_m: Length of the reference line [m].
        lanes_min / lanes_max: Range of lanes per direction drawn from the seed.
        lane_width_m: Lane width [m].
        shoulder_m: Paved shoulder outside the outer lane [m].
        median_m: Width between the two innermost lane edges [m].
        straight_m: Range of straight-section lengths [m].
        curve_radius_m: Range of arc radii [m].
        curve_angle_rad: Range of absolute turning angles per curve [rad].
        clothoid_m: Length of each curvature transition [m].
        station_step_m: Sampling step of lane polylines [m].
        on_ramp: Whether the map has an on-ramp merge on the forward carriageway.
        ramp_station_m: Range of the merge's start station [m].
        ramp_length_m: Length of the ramp before the merge [m].
        ramp_offset_m: Lateral distance the ramp starts from the acceleration lane [m].
        accel_lane_m: Length of the acceleration lane [m].
        speed_limits_mps: Speed limits to choose from [m/s].
        ramp_speed_limit_mps: Speed limit on the ramp [m/s].
        trees_per_km: Roadside trees per kilometre on each side [1/km].
    """

    length_m: float = 2000.0
    lanes_min: int = 3
    lanes_max: int = 5
    lane_width_m: float = 3.75
    shoulder_m: float = 2.5
    median_m: float = 3.0
    straight_m: tuple[float, float] = (150.0, 400.0)
    curve_radius_m: tuple[float, float] = (400.0, 1500.0)
    curve_angle_rad: tuple[float, float] = (0.15, 0.6)
    clothoid_m: float = 80.0
    station_step_m: float = 2.0
    on_ramp: bool = True
    ramp_station_m: tuple[float, float] = (350.0, 700.0)
    ramp_length_m: float = 180.0
    ramp_offset_m: float = 30.0
    accel_lane_m: float = 250.0
    speed_limits_mps: tuple[float, ...] = (27.78, 30.56, 33.33)
    ramp_speed_limit_mps: float = 22.22
    trees_per_km: float = 60.0

    def __post_init__(self) -> None:
        require(1 <= self.lanes_min <= self.lanes_max <= 8,
                f"map: need 1 <= lanes_min <= lanes_max <= 8, got {self.lanes_min}, "
                f"{self.lanes_max}")
        require(self.length_m >= 500.0, f"map.length_m must be >= 500, got {self.length_m}")
        require(self.lane_width_m > 2.0, "map.lane_width_m must be > 2")
        require(0.5 <= self.station_step_m <= 5.0, "map.station_step_m must be in [0.5, 5]")
        require(self.curve_radius_m[0] >= 50.0 and self.curve_radius_m[0] <= self.curve_radius_m[1],
                "map.curve_radius_m must be an increasing range with minimum >= 50 m")
        require(len(self.speed_limits_mps) > 0, "map.speed_limits_mps must not be empty")
        if self.on_ramp:
            require(self.ramp_station_m[0] >= self.ramp_length_m + 20.0,
                    "map.ramp_station_m must start after ramp_length_m + 20 m")
            require(self.ramp_station_m[1] + self.accel_lane_m + 100.0 <= self.length_m,
                    "map: the ramp and acceleration lane must end 100 m before the road end")


@dataclass(frozen=True)
class HighwayLayout:
    """Extra facts about a generated highway that the scene and traffic need.

    Attributes:
        ref_xy / ref_heading / ref_station: The reference line (median centre).
        num_lanes: Lanes per direction.
        merge_station: Start station of the acceleration lane (``nan`` without ramp).
        merge_end_station: End station of the acceleration lane.
        speed_limit_mps: Main-road speed limit.
    """

    ref_xy: FloatArray
    ref_heading: FloatArray
    ref_station: FloatArray
    num_lanes: int
    merge_station: float
    merge_end_station: float
    speed_limit_mps: float


def _curvature_profile(cfg: HighwayMapConfig, rng: np.random.Generator, ds: float) -> FloatArray:
    n = int(round(cfg.length_m / ds)) + 1
    kappa = np.zeros(n)
    # The first straight is long enough to hold the ramp, so merges stay on gentle road.
    i = int(rng.uniform(*cfg.straight_m) / ds)
    sign = float(rng.choice([-1.0, 1.0]))
    while i < n:
        radius = rng.uniform(*cfg.curve_radius_m)
        angle = rng.uniform(*cfg.curve_angle_rad)
        k = sign / radius
        # Clothoids turn half their end curvature times their length; the arc does the rest.
        arc = max(angle * radius - cfg.clothoid_m, 20.0)
        nt = int(cfg.clothoid_m / ds)
        na = int(arc / ds)
        ramp_up = np.linspace(0.0, k, nt, endpoint=False)
        piece = np.concatenate([ramp_up, np.full(na, k), ramp_up[::-1]])
        end = min(i + len(piece), n)
        kappa[i:end] = piece[: end - i]
        i = end + int(rng.uniform(*cfg.straight_m) / ds)
        sign = -sign if rng.random() < 0.7 else sign
    return kappa


def generate_highway(cfg: HighwayMapConfig, seed: int) -> tuple[RoadMap, HighwayLayout]:
    """Generate a highway map from ``seed``.

    Args:
        cfg: Generator parameters.
        seed: Map seed; the same seed always gives the same map.

    Returns:
        The map and its layout facts.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x48494757]))
    ds = cfg.station_step_m
    kappa = _curvature_profile(cfg, rng, ds)
    ref_xy, ref_h = integrate_curvature(kappa, ds)
    station = np.arange(len(kappa)) * ds
    n = int(rng.integers(cfg.lanes_min, cfg.lanes_max + 1))
    limit = float(rng.choice(np.asarray(cfg.speed_limits_mps)))
    w = cfg.lane_width_m
    inner = cfg.median_m / 2.0
    lanes: list[Lane] = []

    def lane_d(k: int) -> float:
        return inner + (k + 0.5) * w

    for direction in ("f", "b"):
        for k in range(n):
            sign = -1.0 if direction == "f" else 1.0
            pts = offset_polyline(ref_xy, ref_h, sign * lane_d(k))
            st = station
            if direction == "b":
                pts, st = pts[::-1], st[::-1]
            lane = Lane(
                id=f"main/{direction}{k}", road="main", centre=pts, width=np.full(len(pts), w),
                station=st, speed_limit_mps=limit,
                left_marking=Marking.SOLID if k == 0 else Marking.DASHED,
                right_marking=Marking.SOLID,
                left=f"main/{direction}{k - 1}" if k > 0 else None,
                right=f"main/{direction}{k + 1}" if k < n - 1 else None,
            )
            lanes.append(lane)

    merge_start = merge_end = float("nan")
    if cfg.on_ramp:
        merge_start = float(np.round(rng.uniform(*cfg.ramp_station_m) / ds) * ds)
        merge_end = merge_start + cfg.accel_lane_m
        d_acc = -lane_d(n)
        sel = (station >= merge_start - 1e-9) & (station <= merge_end + 1e-9)
        acc = Lane(
            id="main/acc", road="main",
            centre=offset_polyline(ref_xy[sel], ref_h[sel], d_acc),
            width=np.full(int(sel.sum()), w), station=station[sel],
            speed_limit_mps=limit, left_marking=Marking.DASHED, right_marking=Marking.SOLID,
            kind="merge", left=f"main/f{n - 1}", predecessors=["ramp/r0"],
        )
        ramp_start = merge_start - cfg.ramp_length_m
        rsel = (station >= ramp_start - 1e-9) & (station <= merge_start + 1e-9)
        t = (station[rsel] - ramp_start) / cfg.ramp_length_m
        d_ramp = d_acc - cfg.ramp_offset_m * (1.0 - smoothstep5(t))
        ramp = Lane(
            id="ramp/r0", road="ramp",
            centre=offset_polyline(ref_xy[rsel], ref_h[rsel], d_ramp),
            width=np.full(int(rsel.sum()), w), station=station[rsel],
            speed_limit_mps=cfg.ramp_speed_limit_mps, left_marking=Marking.SOLID,
            right_marking=Marking.SOLID, kind="ramp", successors=["main/acc"],
        )
        lanes[n - 1].right = "main/acc"
        lanes += [acc, ramp]

    barriers = _barriers(cfg, ref_xy, ref_h, station, n, merge_start, merge_end)
    objects = _roadside_objects(cfg, rng, ref_xy, ref_h, station, n, merge_start)
    layout = HighwayLayout(
        ref_xy=ref_xy, ref_heading=ref_h, ref_station=station, num_lanes=n,
        merge_station=merge_start, merge_end_station=merge_end, speed_limit_mps=limit,
    )
    road = RoadMap(lanes, name=f"highway-{seed}", barriers=barriers, objects=objects,
                   shoulders=(cfg.median_m / 2.0, cfg.shoulder_m))
    return road, layout


def _ramp_offset(cfg: HighwayMapConfig, n: int, merge_start: float,
                 station: FloatArray) -> FloatArray:
    """Lateral offset of the ramp centre line at ``station`` (valid on the ramp) [m]."""
    d_acc = -(cfg.median_m / 2.0 + (n + 0.5) * cfg.lane_width_m)
    t = (station - (merge_start - cfg.ramp_length_m)) / cfg.ramp_length_m
    return d_acc - cfg.ramp_offset_m * (1.0 - smoothstep5(t))


def _barriers(cfg: HighwayMapConfig, ref_xy: FloatArray, ref_h: FloatArray, station: FloatArray,
              n: int, merge_start: float, merge_end: float) -> list[FloatArray]:
    """Median barrier, outer barriers, and the barrier around the ramp (with a gore gap)."""
    edge = cfg.median_m / 2.0 + n * cfg.lane_width_m + cfg.shoulder_m
    out = [ref_xy.copy(), offset_polyline(ref_xy, ref_h, edge)]
    if not cfg.on_ramp:
        return [*out, offset_polyline(ref_xy, ref_h, -edge)]
    w = cfg.lane_width_m
    d_ramp = _ramp_offset(cfg, n, merge_start, station)
    on_ramp = (station >= merge_start - cfg.ramp_length_m) & (station <= merge_start)
    # The plain outer barrier stops where the ramp's left edge comes within 1 m of it.
    crossing = on_ramp & (d_ramp + w / 2.0 + 1.0 >= -edge)
    stop = station[np.argmax(crossing)] if crossing.any() else merge_start
    before = station <= stop
    out.append(offset_polyline(ref_xy[before], ref_h[before], -edge))
    # Around the ramp and the acceleration lane, then tapering back to the outer edge.
    taper = 40.0
    d_outer = np.where(on_ramp, d_ramp - w / 2.0 - cfg.shoulder_m, -edge - w)
    blend = np.clip((station - merge_end) / taper, 0.0, 1.0)
    d_outer = np.where(station > merge_end, -edge - w * (1.0 - smoothstep5(blend)), d_outer)
    after = station >= merge_start - cfg.ramp_length_m
    out.append(offset_polyline(ref_xy[after], ref_h[after], d_outer[after]))
    return out


def _roadside_objects(cfg: HighwayMapConfig, rng: np.random.Generator, ref_xy: FloatArray,
                      ref_h: FloatArray, station: FloatArray, n: int,
                      merge_start: float) -> list[StaticObject]:
    """Trees on both verges and speed-limit signs on the right, away from the ramp."""
    edge = cfg.median_m / 2.0 + n * cfg.lane_width_m + cfg.shoulder_m
    objects: list[StaticObject] = []

    def near_ramp(s_i: float) -> bool:
        """Whether station ``s_i`` [m] lies along the ramp or the acceleration lane."""
        return cfg.on_ramp and (merge_start - cfg.ramp_length_m - 20.0 < s_i
                                < merge_start + cfg.accel_lane_m + 60.0)

    count = rng.poisson(cfg.trees_per_km * cfg.length_m / 1000.0, size=2)
    for side, k in zip((1.0, -1.0), count, strict=True):
        st = np.sort(rng.uniform(0.0, station[-1], size=int(k)))
        dist = rng.uniform(5.0, 35.0, size=int(k))
        heights = rng.uniform(4.0, 9.0, size=int(k))
        for s_i, d_i, h_i in zip(st, dist, heights, strict=True):
            d = side * (edge + d_i)
            if side < 0 and near_ramp(s_i) and d > _ramp_offset(
                    cfg, n, merge_start, np.asarray([s_i]))[0] - 12.0:
                continue
            j = int(np.searchsorted(station, s_i))
            j = min(j, len(station) - 1)
            x, y = offset_polyline(ref_xy[j : j + 1], ref_h[j : j + 1], d)[0]
            crown = float(rng.uniform(2.0, 4.0))
            objects.append(StaticObject("tree", float(x), float(y), float(rng.uniform(0, np.pi)),
                                        (crown, crown, float(h_i))))
    for s_i in np.arange(150.0, station[-1] - 50.0, 500.0):
        if near_ramp(s_i):
            continue  # the ramp and the acceleration lane run where the sign would stand
        j = int(np.searchsorted(station, s_i))
        x, y = offset_polyline(ref_xy[j : j + 1], ref_h[j : j + 1], -(edge + 1.5))[0]
        objects.append(StaticObject("sign", float(x), float(y), float(ref_h[j]), (0.15, 1.2, 2.8)))
    return objects
