"""The pybullet driving env: one pybullet client, one map, the ego car, traffic, sensors.

:class:`DrivingEnv` holds everything that does not depend on the kind of map; a
subclass (for example :class:`envs.highway_env.HighwayEnv`) generates maps and chooses
the ego's start and route. Each ``reset`` rebuilds the pybullet world from scratch
(``resetSimulation``), so an episode depends only on its seed, options and actions,
bit for bit, whatever ran before it in the process.

Observation (``gymnasium.spaces.Dict``):
    ``camera``: uint8 (H, W, 3) RGB image (when ``sensors.camera``);
    ``measurements``: float32 (9,) = speed [m/s], steering angle [rad], route command
    one-hot (6: follow lane, left, right, straight, change left, change right), distance
    to the next manoeuvre [m];
    ``state``: float32 privileged vector (when ``sensors.state``), see :func:`state_layout`.
Action: float32 (2,) ``[steer, accel]`` in [-1, 1]; out-of-range values are clipped,
NaN/inf raise ``ValueError``.
"""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import pybullet as p
from gymnasium import spaces
from numpy.typing import NDArray

from envs import events as ev
from envs.config import EnvConfig, load_env_config
from envs.maps.road_map import LanePoint, Marking, RoadMap
from envs.maps.route import Route
from envs.render.bev import BirdEyeView, BoxAgent
from envs.sim.camera import CameraFrame, EgoCamera, select_renderer
from envs.sim.conditions import draw_conditions
from envs.sim.corruptions import Corruptor
from envs.sim.egl_shading import EglShading
from envs.sim.lidar import EGO_COLLISION_GROUP, Lidar
from envs.sim.mesh_files import MeshFileCache
from envs.sim.scene import Scene, SceneGeometry, SemanticClass, build_atlas, build_geometry
from envs.sim.vehicle import EgoVehicle, VehicleState
from envs.traffic.manager import EgoSlot, TrafficManager
from envs.traffic.pedestrians import Pedestrians
from envs.traffic.signals import AMBER, GREEN, RED, SignalHeads, SignalStates

MEASUREMENT_KEYS = ("speed_mps", "steer_rad", "cmd_follow_lane", "cmd_left", "cmd_right",
                    "cmd_straight", "cmd_change_left", "cmd_change_right",
                    "distance_to_manoeuvre_m")
EGO_STATE_KEYS = ("speed_mps", "lateral_offset_m", "heading_error_rad", "lane_width_m",
                  "steer_rad", "accel_mps2", "lanes_left", "lanes_right", "speed_limit_mps")
VEHICLE_STATE_KEYS = ("dx_m", "dy_m", "dvx_mps", "dvy_mps", "length_m", "width_m", "present")
OPTION_KEYS = ("map_seed", "start_lane", "start_s_m")


#: BEV colours of signal states (GREEN, AMBER, RED), RGB.
_SIGNAL_COLOURS = {GREEN: (40, 200, 60), AMBER: (245, 190, 20), RED: (230, 30, 30)}


def state_layout(num_vehicles: int) -> list[str]:
    """Names of the entries of the privileged ``state`` vector (ego frame for vehicles)."""
    names = [f"ego.{k}" for k in EGO_STATE_KEYS]
    for i in range(num_vehicles):
        names += [f"vehicle{i}.{k}" for k in VEHICLE_STATE_KEYS]
    return names


class DrivingEnv(gym.Env[dict[str, NDArray[Any]], NDArray[np.float32]]):
    """Base gymnasium env for pybullet driving worlds.

    Args:
        config: An :class:`EnvConfig`, a YAML path, a config name in ``configs/env/``,
            a mapping, or ``None`` for the defaults.
        overrides: ``key.sub=value`` strings applied on top of ``config``.
        render_mode: ``"rgb_array"`` renders a bird's-eye view beside the camera.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}  # noqa: RUF012
    default_config: ClassVar[str | None] = None
    config_class: ClassVar[type[EnvConfig]] = EnvConfig
    traffic_layout: ClassVar[str] = "corridor"

    def __init__(self, config: EnvConfig | str | Path | Mapping[str, Any] | None = None,
                 overrides: Sequence[str] = (), render_mode: str | None = None) -> None:
        super().__init__()
        if config is None:
            config = self.default_config
        self.config: Any = load_env_config(config, overrides, self.config_class)
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"unknown render_mode {render_mode!r}; valid: None, 'rgb_array'")
        self.render_mode = render_mode
        cfg = self.config
        self.dt = 1.0 / cfg.control_hz
        self.client = p.connect(p.DIRECT)
        self._closed = False
        #: The renderer actually used for camera frames (``tiny`` or ``egl``); None when
        #: nothing renders. Resolved once per client: the plugin outlives resets.
        self.renderer_in_use: str | None = None
        if cfg.sensors.renders:
            try:
                self.renderer_in_use = select_renderer(self.client, cfg.camera.renderer)
            except RuntimeError as exc:
                p.disconnect(physicsClientId=self.client)
                self._closed = True
                raise ValueError(str(exc)) from None
        # The EGL plugin draws scene meshes only from files (see envs.sim.mesh_files).
        self._mesh_files = MeshFileCache() if self.renderer_in_use == "egl" else None
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        obs: dict[str, spaces.Space[Any]] = {}
        hw = (cfg.camera.height, cfg.camera.width)
        if cfg.sensors.camera:
            obs["camera"] = spaces.Box(0, 255, (*hw, 3), np.uint8)
        if cfg.sensors.depth:
            obs["depth"] = spaces.Box(0.0, cfg.camera.far_m, hw, np.float32)
        if cfg.sensors.semantic:
            obs["semantic"] = spaces.Box(0, max(SemanticClass), hw, np.uint8)
        if cfg.sensors.lidar:
            lidar = cfg.sensors.lidar_config
            obs["lidar"] = spaces.Box(0.0, lidar.range_m, (lidar.num_rays,), np.float32)
        low = np.array([-100.0, -2.0, 0, 0, 0, 0, 0, 0, 0.0], np.float32)
        high = np.array([100.0, 2.0, 1, 1, 1, 1, 1, 1, 1.0e5], np.float32)
        self._measurement_space = spaces.Box(low, high, dtype=np.float32)
        obs["measurements"] = self._measurement_space
        if cfg.sensors.state:
            n = len(state_layout(cfg.sensors.state_vehicles))
            obs["state"] = spaces.Box(-1.0e4, 1.0e4, (n,), np.float32)
        self.observation_space = spaces.Dict(obs)  # type: ignore[assignment]
        self._maps: OrderedDict[int, Any] = OrderedDict()
        self._atlases: dict[int, NDArray[np.uint8]] = {}
        self.road_map: RoadMap | None = None
        self.route: Route | None = None
        self._bev: BirdEyeView | None = None
        self._frame: CameraFrame | None = None

    # ------------------------------------------------------------------ world hooks
    def generate_map(self, map_seed: int) -> tuple[RoadMap, Any]:
        """Build the map for ``map_seed`` (plain data); subclasses implement it."""
        raise NotImplementedError

    def sample_start(self, rng: np.random.Generator, layout: Any,
                     options: Mapping[str, Any]) -> tuple[str, float, Route]:
        """Choose the ego's start lane, arc length and route; subclasses implement it."""
        raise NotImplementedError

    # ------------------------------------------------------------------ reset
    def _map_for(self, map_seed: int) -> tuple[RoadMap, Any, SceneGeometry]:
        """Map, layout and scene meshes for ``map_seed`` (pure data, cached per env)."""
        if map_seed not in self._maps:
            road_map, layout = self.generate_map(map_seed)
            visual_rng = np.random.default_rng(np.random.SeedSequence([map_seed, 0x56495355]))
            geometry = build_geometry(road_map, self.config.scene, visual_rng)
            self._maps[map_seed] = (road_map, layout, geometry)
            while len(self._maps) > 4:
                self._maps.popitem(last=False)
        self._maps.move_to_end(map_seed)
        return self._maps[map_seed]

    def _atlas(self, variant: int) -> NDArray[np.uint8]:
        """Texture atlas number ``variant`` (drawn once per env, then reused)."""
        if variant not in self._atlases:
            rng = np.random.default_rng(np.random.SeedSequence([variant, 0x41544C53]))
            self._atlases[variant] = build_atlas(rng, vary=variant > 0)[0]
        return self._atlases[variant]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None,
              ) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
        """Start an episode; every random choice comes from ``seed``.

        Options: ``map_seed`` (int) forces the map; ``start_lane`` (lane id) and
        ``start_s_m`` (arc length [m]) force the ego's start.
        """
        if seed is not None and (not isinstance(seed, int | np.integer) or seed < 0):
            raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = sorted(set(options) - set(OPTION_KEYS))
        if unknown:
            raise ValueError(f"unknown reset option(s) {unknown}; valid options: "
                             f"{', '.join(OPTION_KEYS)}")
        cfg = self.config
        episode_seed = int(self.np_random.integers(0, 2**31 - 1))
        self.episode_seed = seed if seed is not None else episode_seed
        if "map_seed" in options:
            map_seed = int(options["map_seed"])
        elif cfg.num_maps > 0:
            map_seed = cfg.map_seed_offset + self.episode_seed % cfg.num_maps
        else:
            map_seed = cfg.map_seed_offset + self.episode_seed
        self.map_seed = map_seed
        rng = np.random.default_rng(np.random.SeedSequence([self.episode_seed, 0x45505344]))
        self.road_map, layout, geometry = self._map_for(map_seed)
        self._bev = None
        c = self.client
        p.resetSimulation(physicsClientId=c)
        p.setGravity(0, 0, -9.81, physicsClientId=c)
        p.setPhysicsEngineParameter(fixedTimeStep=1.0 / cfg.physics_hz, numSubSteps=1,
                                    numSolverIterations=cfg.solver_iterations,
                                    enableConeFriction=0, deterministicOverlappingPairs=1,
                                    physicsClientId=c)
        vis = cfg.visual
        visual_rng = np.random.default_rng(np.random.SeedSequence([self.episode_seed, 0x56495355]))
        self.conditions = draw_conditions(vis.randomize, vis.time_of_day, vis.texture_variants,
                                          vis.light_elevation_rad, vis.light_azimuth_rad,
                                          vis.ambient, vis.diffuse, visual_rng)
        cond = self.conditions
        # EGL ignores the ambient and diffuse coefficients and the light colour: bake them
        # into what it draws (envs.sim.egl_shading). None keeps TinyRenderer's path as is.
        shading = (EglShading.create(cond.light_direction, cond.light_color, cond.ambient,
                                     cond.diffuse) if self.renderer_in_use == "egl" else None)
        tint = shading.tint if shading is not None else None
        self.scene = Scene(c, geometry, cfg.scene, self._atlas(self.conditions.texture_variant),
                           placeholder_visuals=self.renderer_in_use == "egl",
                           mesh_files=self._mesh_files, shading=shading)
        lane_id, s0, self.route = self.sample_start(rng, layout, options)
        lane = self.road_map.lane(lane_id)
        x, y = lane.position(s0)
        yaw = float(lane.heading_at(s0))
        speed = cfg.initial_speed_factor * lane.speed_limit_mps
        # The camera sits inside the car, which is hidden from it (alpha 0, below). EGL's
        # segmentation mask ignores alpha, so there the car would still cover the bottom
        # of every semantic image: under EGL it gets no drawable shapes at all.
        # TinyRenderer keeps the drawn, hidden car, so its frames stay as they were.
        self.vehicle = EgoVehicle(c, cfg.vehicle, float(x), float(y), yaw, speed,
                                  drawn=self.renderer_in_use != "egl")
        self.traffic = TrafficManager(c, self.road_map, cfg.traffic, self.dt, self.traffic_layout,
                                      tint=tint)
        self.traffic.reset(rng, self.road_map.lane_index[lane_id], s0)
        self.signals = SignalStates(self.road_map)
        self.signal_heads = (SignalHeads(c, self.road_map, cfg.scene.view_distance_m, tint=tint)
                             if self.road_map.signals and cfg.sensors.renders else None)
        offset = getattr(cfg, "signal_time_offset_s", (0.0, 0.0))
        self.time_offset_s = float(rng.uniform(*offset)) if offset[1] > offset[0] else 0.0
        ped_cfg = getattr(cfg, "pedestrians", None)
        self.pedestrians = (Pedestrians(c, self.road_map, ped_cfg, self.dt, tint=tint)
                            if ped_cfg is not None else None)
        if self.pedestrians is not None:
            self.pedestrians.reset(rng, float(x), float(y))
        self.traffic_class = {**self.traffic.body_class,
                              **(self.pedestrians.body_class if self.pedestrians else {})}
        self.camera = (EgoCamera(c, cfg.camera, "egl" if self.renderer_in_use == "egl" else "tiny")
                       if cfg.sensors.renders else None)
        self.corruptor = Corruptor(cfg.visual.corruption)
        self.corruption_rng = np.random.default_rng(
            np.random.SeedSequence([self.episode_seed, 0x434F5252]))
        if self.camera is not None:
            cond = self.conditions
            self.camera.set_conditions(cond.light_direction, cond.light_color, cond.ambient,
                                       cond.diffuse, cond.sky_top, cond.sky_horizon, cond.ground)
        self.lidar = Lidar(c, cfg.sensors.lidar_config) if cfg.sensors.lidar else None
        if self.lidar is not None:
            # Its own group (colliding with everything as before) so that rays skip the ego.
            for link in range(-1, p.getNumJoints(self.vehicle.body_id, physicsClientId=c)):
                p.setCollisionFilterGroupMask(self.vehicle.body_id, link, EGO_COLLISION_GROUP,
                                              0xFFFF, physicsClientId=c)
        if self.camera is not None:
            # The camera sits inside the car: hide the ego's own body from the renderer.
            for link in range(-1, p.getNumJoints(self.vehicle.body_id, physicsClientId=c)):
                p.changeVisualShape(self.vehicle.body_id, link, rgbaColor=[1, 1, 1, 0],
                                    physicsClientId=c)
        self._camera_period = (max(int(round(cfg.control_hz / cfg.camera.rate_hz)), 1)
                               if cfg.camera.rate_hz > 0 else 1)
        self.steps = 0
        self.state: VehicleState = self.vehicle.state()
        self.lane_point: LanePoint | None = LanePoint(lane_id, s0, 0.0, yaw)
        self.route_start = self.route.distance(lane_id, s0) or 0.0
        self.route_progress = self.route_start
        self.prev_action = np.zeros(2)
        self.prev_speed = self.state.speed_mps
        self.accel_mps2 = 0.0
        self.wrong_way_m = 0.0
        self._overrun: set[int] = set()
        self._frame = None
        self.last_events: list[ev.Event] = []
        return self._observation(), self._info([])

    # ------------------------------------------------------------------ step
    def step(self, action: Any) -> tuple[dict[str, NDArray[Any]], float, bool, bool,
                                         dict[str, Any]]:
        """Apply ``[steer, accel]`` for one control period and advance the world."""
        if self.road_map is None:
            raise RuntimeError("call reset() before step()")
        act = np.asarray(action, dtype=np.float64).reshape(-1)
        if act.shape != (2,):
            raise ValueError(f"action must have 2 values [steer, accel], got shape "
                             f"{np.shape(action)}")
        if not np.all(np.isfinite(act)):
            raise ValueError(f"action contains NaN or inf: {act.tolist()}; expected 2 finite "
                             "values [steer, accel] in [-1, 1] (larger values are clipped)")
        act = np.clip(act, -1.0, 1.0)
        cfg = self.config
        c = self.client
        ego_id = self.vehicle.body_id
        self.vehicle.apply_control(float(act[0]), float(act[1]))
        contacts: dict[int, None] = {}
        for _ in range(cfg.substeps):
            p.stepSimulation(physicsClientId=c)
            for contact in p.getContactPoints(bodyA=ego_id, linkIndexA=-1, physicsClientId=c):
                contacts[contact[2]] = None
        for contact in p.getContactPoints(bodyA=ego_id, physicsClientId=c):
            contacts[contact[2]] = None
        self._speed_before = self.state.speed_mps
        self.state = st = self.vehicle.state()
        self.accel_mps2 = (st.speed_mps - self.prev_speed) / self.dt
        self.prev_speed = st.speed_mps
        self.steps += 1
        events: list[ev.Event] = []
        prev_point = self.lane_point
        self.lane_point = self.road_map.locate(np.array([st.x, st.y]), st.yaw)
        states = self.signals.states(self.sim_time_s)
        self.traffic.step(self._ego_slot(), self._advance_pedestrians(states))
        self._signal_events(prev_point, states, events)
        self._collision_events(contacts, events)
        self._lane_events(prev_point, events)
        progress = self._progress(events)
        reward = self._reward(act, progress, events)
        terminated, truncated = self._termination(events)
        self.prev_action = act
        self.last_events = events
        return self._observation(), reward, terminated, truncated, self._info(events)

    def _advance_pedestrians(self, states: NDArray[Any]) -> NDArray[Any]:
        """Move the pedestrians; return where traffic must stop on each lane this step.

        Stop points are half a metre before the stop line (the lane's end) of every lane
        whose light is not green, and just before crossings with pedestrians on them.
        """
        rm = self.road_map
        assert rm is not None
        held = np.zeros(len(rm.lanes), dtype=bool)
        if len(states):
            lanes = np.flatnonzero(self.signals.lane_signal >= 0)
            held[lanes] = states[self.signals.lane_signal[lanes]] != GREEN
        stops = np.where(held, self.traffic.lane_length - 0.5, np.inf)
        if self.pedestrians is not None:
            t = self.traffic
            vehicles = np.vstack([[self.state.x, self.state.y],
                                  np.column_stack([t.x[t.active], t.y[t.active]])])
            self.pedestrians.step(held, vehicles)
            stops = np.minimum(stops, self.pedestrians.blocked(len(rm.lanes)))
        return stops

    def _ego_slot(self) -> EgoSlot:
        lp = self.lane_point
        if lp is None:
            return EgoSlot(-1, 0.0, self.state.speed_mps, self.config.vehicle.length_m)
        return EgoSlot(self.road_map.lane_index[lp.lane], lp.s,  # type: ignore[union-attr]
                       max(self.state.speed_mps, 0.0), self.config.vehicle.length_m)

    def _collision_events(self, contacts: Mapping[int, None], events: list[ev.Event]) -> None:
        st = self.state
        for body in contacts:
            cls = (self.traffic_class[body] if body in self.traffic_class
                   else self.scene.body_class.get(body, SemanticClass.STATIC))
            if cls == SemanticClass.ROAD:
                continue
            event: ev.Event = {"type": ev.COLLISION, "other": int(body)}
            if cls == SemanticClass.VEHICLE:
                i = self.traffic.body_ids.index(body)
                lp = self.lane_point
                heading_err = (0.0 if lp is None
                               else math.remainder(st.yaw - lp.heading, 2 * math.pi))
                event["class"] = "vehicle"
                event["at_fault"] = ev.vehicle_collision_fault(
                    st.x, st.y, st.yaw, st.speed_mps * math.sin(heading_err),
                    self._wrong_way(), float(self.traffic.x[i]), float(self.traffic.y[i]),
                    float(self.traffic.yaw[i]), float(self.traffic.d_rate[i]),
                    (self.config.vehicle.width_m + float(self.traffic.width[i])) / 2.0)
            elif cls == SemanticClass.PEDESTRIAN:
                event["class"] = "pedestrian"
                # At fault unless stopped; the speed before the impact decides.
                event["at_fault"] = max(abs(st.speed_mps), abs(self._speed_before)) > 0.1
            else:
                event["class"] = "static"
                event["at_fault"] = True
            events.append(event)

    def _wrong_way(self) -> bool:
        lp = self.lane_point
        if lp is None:
            return False
        return math.cos(self.state.yaw - lp.heading) < 0.0

    @property
    def sim_time_s(self) -> float:
        """Simulated time, including the episode's signal-clock offset [s]."""
        return self.steps * self.dt + self.time_offset_s

    def _signal_events(self, prev: LanePoint | None, states: NDArray[Any],
                       events: list[ev.Event]) -> None:
        """``red_light`` when the ego enters a junction on red; ``stop_line`` when it stops
        with its front past the stop line of a red light."""
        lp = self.lane_point
        rm = self.road_map
        assert rm is not None
        if lp is None or len(states) == 0:
            return
        if prev is not None and prev.lane != lp.lane:
            k = int(self.signals.lane_signal[rm.lane_index[prev.lane]])
            if k >= 0 and states[k] == RED and lp.lane in rm.lane(prev.lane).successors:
                events.append({"type": ev.RED_LIGHT, "signal": rm.signals[k].id})
        k = int(self.signals.lane_signal[rm.lane_index[lp.lane]])
        if k >= 0 and states[k] == RED:
            front = lp.s + self.config.vehicle.length_m / 2.0
            over = front - rm.lane(lp.lane).length
            if over > 0.5 and abs(self.state.speed_mps) < 0.3 and k not in self._overrun:
                self._overrun.add(k)
                events.append({"type": ev.STOP_LINE, "signal": rm.signals[k].id,
                               "overrun_m": over})

    def _lane_events(self, prev: LanePoint | None, events: list[ev.Event]) -> None:
        lp = self.lane_point
        rm = self.road_map
        assert rm is not None
        if lp is None or abs(lp.d) > float(rm.lane(lp.lane).width_at(lp.s)) / 2.0:
            events.append({"type": ev.OFF_ROAD})
        if lp is not None and prev is not None and lp.lane != prev.lane:
            old = rm.lane(prev.lane)
            if lp.lane == old.left:
                marking = old.left_marking
            elif lp.lane == old.right:
                marking = rm.lane(lp.lane).left_marking
            else:
                marking = None
            if marking is not None:
                events.append({"type": ev.LANE_INVASION, "marking": Marking(marking).name.lower()})
        if self._wrong_way() and self.state.speed_mps > 0.5:
            dist = abs(self.state.speed_mps) * self.dt
            self.wrong_way_m += dist
            events.append({"type": ev.WRONG_WAY, "distance_m": dist})

    def _progress(self, events: list[ev.Event]) -> float:
        """Route progress this step [m]; adds ``route_deviation`` when off the route."""
        lp = self.lane_point
        assert self.route is not None
        dist = None if lp is None else self.route.distance(lp.lane, lp.s)
        if dist is None:
            if lp is not None:
                events.append({"type": ev.ROUTE_DEVIATION})
            return 0.0
        # Ignore jumps (re-localisation on another lane) beyond what the car can drive.
        delta = dist - self.route_progress
        if abs(delta) > 5.0 * max(abs(self.state.speed_mps), 5.0) * self.dt:
            return 0.0
        self.route_progress = dist
        if dist >= self.route.length - 1e-6:
            events.append({"type": ev.ROUTE_COMPLETED})
        return delta

    def _reward(self, act: NDArray[np.float64], progress: float,
                events: list[ev.Event]) -> float:
        w = self.config.reward
        r = w.progress_per_m * progress
        types = {e["type"] for e in events}
        if ev.COLLISION in types:
            r += w.collision
        if ev.OFF_ROAD in types:
            r += w.off_road
        if ev.ROUTE_COMPLETED in types:
            r += w.success
        r -= w.steer_change * abs(act[0] - self.prev_action[0])
        r -= w.accel_change * abs(act[1] - self.prev_action[1])
        limit = self._speed_limit()
        r -= w.speeding_per_mps * max(self.state.speed_mps - limit, 0.0)
        return float(r)

    def _speed_limit(self) -> float:
        lp = self.lane_point
        rm = self.road_map
        assert rm is not None
        if lp is None:
            return float(min(ln.speed_limit_mps for ln in rm.lanes))
        return rm.lane(lp.lane).speed_limit_mps

    def _termination(self, events: list[ev.Event]) -> tuple[bool, bool]:
        cfg = self.config
        types = {e["type"] for e in events}
        terminated = ev.ROUTE_COMPLETED in types
        terminated |= cfg.terminate_on_collision and ev.COLLISION in types
        terminated |= cfg.terminate_on_off_road and ev.OFF_ROAD in types
        truncated = not terminated and self.steps >= cfg.max_steps
        if truncated:
            events.append({"type": ev.TIMEOUT})
        return bool(terminated), bool(truncated)

    # ------------------------------------------------------------------ observations
    def _observation(self) -> dict[str, NDArray[Any]]:
        obs: dict[str, NDArray[Any]] = {}
        st = self.state
        sensors = self.config.sensors
        if self.camera is not None:
            if self._frame is None or self.steps % self._camera_period == 0:
                self.scene.update_visibility(st.x, st.y, st.yaw)
                if self.signal_heads is not None:
                    self.signal_heads.update(st.x, st.y, self.signals.states(self.sim_time_s))
                self._frame = self.camera.render(st.x, st.y, st.z, st.yaw, sensors.depth,
                                                 sensors.semantic)
                self._corrupted = self.corruptor(self._frame.rgb, self.corruption_rng)
            frame = self._frame
            if sensors.camera:
                obs["camera"] = self._corrupted
            if frame.depth_m is not None:
                obs["depth"] = frame.depth_m
            if frame.body_ids is not None:
                obs["semantic"] = self._semantic(frame.body_ids)
        if self.lidar is not None:
            obs["lidar"] = self.lidar.scan(st.x, st.y, st.z, st.yaw)
        assert self.route is not None
        command, dist = self.route.next_command(self.route_progress)
        meas = np.zeros(len(MEASUREMENT_KEYS), np.float32)
        meas[0] = st.speed_mps
        meas[1] = st.steer_rad
        meas[2 + int(command)] = 1.0
        meas[8] = dist
        space = self._measurement_space
        obs["measurements"] = np.clip(meas, space.low, space.high)
        if self.config.sensors.state:
            obs["state"] = self._privileged_state()
        return obs

    def _semantic(self, body_ids: NDArray[Any]) -> NDArray[np.uint8]:
        """Map per-pixel body ids to semantic class ids through the object registry."""
        registry = {**self.scene.body_class, **self.traffic_class,
                    **(self.signal_heads.body_class if self.signal_heads else {})}
        lut = np.zeros(max(registry, default=0) + 2, np.uint8)  # last entry: nothing hit
        for body, cls in registry.items():
            lut[body] = cls
        return lut[np.where(body_ids < 0, len(lut) - 1, body_ids)]

    def _privileged_state(self) -> NDArray[np.float32]:
        cfg = self.config.sensors
        st = self.state
        rm = self.road_map
        assert rm is not None
        ego = np.zeros(len(EGO_STATE_KEYS))
        ego[0] = st.speed_mps
        lp = self.lane_point
        if lp is not None:
            lane = rm.lane(lp.lane)
            ego[1] = lp.d
            ego[2] = math.remainder(st.yaw - lp.heading, 2 * math.pi)
            ego[3] = float(lane.width_at(lp.s))
            ego[6] = _count_neighbours(rm, lp.lane, "left")
            ego[7] = _count_neighbours(rm, lp.lane, "right")
        ego[4] = st.steer_rad
        ego[5] = self.accel_mps2
        ego[8] = self._speed_limit()
        k = cfg.state_vehicles
        others = np.zeros((k, len(VEHICLE_STATE_KEYS)))
        boxes = self.traffic.boxes()
        if len(boxes) and k:
            c, s = math.cos(st.yaw), math.sin(st.yaw)
            rel = boxes[:, :2] - (st.x, st.y)
            dx = c * rel[:, 0] + s * rel[:, 1]
            dy = -s * rel[:, 0] + c * rel[:, 1]
            vx = boxes[:, 5] * np.cos(boxes[:, 2]) - st.vx
            vy = boxes[:, 5] * np.sin(boxes[:, 2]) - st.vy
            dvx = c * vx + s * vy
            dvy = -s * vx + c * vy
            dist = np.hypot(dx, dy)
            order = np.argsort(dist, kind="stable")
            order = order[dist[order] <= cfg.state_range_m][:k]
            m = len(order)
            others[:m] = np.column_stack([dx[order], dy[order], dvx[order], dvy[order],
                                          boxes[order, 3], boxes[order, 4], np.ones(m)])
        return np.concatenate([ego, others.ravel()]).astype(np.float32)

    def _info(self, events: list[ev.Event]) -> dict[str, Any]:
        st = self.state
        lp = self.lane_point
        assert self.route is not None
        span = max(self.route.length - self.route_start, 1e-6)
        return {
            "ego": {
                "x": st.x, "y": st.y, "z": st.z, "yaw": st.yaw, "vx": st.vx, "vy": st.vy,
                "speed_mps": st.speed_mps, "yaw_rate_radps": st.yaw_rate_radps,
                "steer_rad": st.steer_rad, "accel_mps2": self.accel_mps2,
                "lane": None if lp is None else lp.lane,
                "s_m": None if lp is None else lp.s,
                "lateral_offset_m": None if lp is None else lp.d,
            },
            "route_completion": float(np.clip((self.route_progress - self.route_start) / span,
                                              0.0, 1.0)),
            "route_progress_m": self.route_progress - self.route_start,
            "route_length_m": span,
            "speed_limit_mps": self._speed_limit(),
            "wrong_way_m": self.wrong_way_m,
            "events": events,
            "step": self.steps,
            "map_seed": self.map_seed,
        }

    # ------------------------------------------------------------------ rendering
    def bev(self, size_px: int = 256, metres_per_px: float = 0.4,
            planned_path: NDArray[np.float64] | None = None) -> NDArray[np.uint8]:
        """Bird's-eye view around the ego with traffic, pedestrians, signal stop lines
        (coloured by state) and the route; ``planned_path`` (K, 2) [m] is drawn on top."""
        assert self.road_map is not None and self.route is not None
        if self._bev is None or self._bev.size_px != size_px:
            self._bev = BirdEyeView(self.road_map, size_px, metres_per_px)
            self._route_line = self.route.polyline()
        st = self.state
        agents = [BoxAgent(float(b[0]), float(b[1]), float(b[2]), float(b[3]), float(b[4]))
                  for b in self.traffic.boxes()]
        peds = self.pedestrians
        if peds is not None:
            agents += [BoxAgent(float(px), float(py), 0.0, 0.7, 0.7, (40, 90, 230))
                       for px, py in zip(peds.x, peds.y, strict=True)]
        agents.append(BoxAgent(st.x, st.y, st.yaw, self.config.vehicle.length_m,
                               self.config.vehicle.width_m, (230, 40, 40)))
        states = self.signals.states(self.sim_time_s)
        stop_lines = [(sig.stop_line, _SIGNAL_COLOURS[int(states[k])])
                      for k, sig in enumerate(self.road_map.signals)] if len(states) else []
        return self._bev.render(st.x, st.y, st.yaw, agents, self._route_line, planned_path,
                                stop_lines)

    def render(self) -> NDArray[np.uint8] | None:
        """``rgb_array``: the camera frame (scaled) beside the bird's-eye view."""
        if self.render_mode != "rgb_array":
            return None
        import cv2

        view = self.bev(256)
        if self.camera is None:
            return view
        if self._frame is None:
            st = self.state
            self._frame = self.camera.render(st.x, st.y, st.z, st.yaw)
        cam = self._frame.rgb
        big: NDArray[Any] = cv2.resize(cam, (256, 256), interpolation=cv2.INTER_NEAREST)
        return np.concatenate([big, view], axis=1)

    def close(self) -> None:
        """Disconnect the pybullet client (safe to call twice)."""
        if not self._closed:
            p.disconnect(physicsClientId=self.client)
            self._closed = True
            if self._mesh_files is not None:
                self._mesh_files.close()
        super().close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit pybullet may be gone
            self.close()


def _count_neighbours(rm: RoadMap, lane_id: str, side: str) -> int:
    n = 0
    cur = rm.lane(lane_id)
    seen = {lane_id}
    while True:
        nxt = cur.left if side == "left" else cur.right
        if nxt is None or nxt in seen:
            return n
        seen.add(nxt)
        cur = rm.lane(nxt)
        n += 1

