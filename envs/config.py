"""Configuration of a driving env: one frozen dataclass per component, composed in EnvConfig.

The defaults are the embedded default configuration; ``configs/env/highway.yaml`` spells
them out. Load with :func:`load_env_config` (YAML path or name, plus ``key.sub=value``
overrides); unknown keys and wrong types are rejected with the list of valid keys.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from common.config import load_config, require
from envs.maps.highway import HighwayMapConfig
from envs.maps.urban import UrbanMapConfig
from envs.sim.camera import CameraConfig
from envs.sim.corruptions import CorruptionConfig
from envs.sim.lidar import LidarConfig
from envs.sim.scene import SceneConfig
from envs.sim.vehicle import VehicleConfig
from envs.traffic.manager import TrafficConfig
from envs.traffic.pedestrians import PedestrianConfig


@dataclass(frozen=True)
class SensorsConfig:
    """Which observations the env returns.

    Attributes:
        camera: Return the RGB ``camera`` image.
        depth: Return ``depth``: metric depth (H, W) float32 [m] from the camera.
        semantic: Return ``semantic``: class ids (H, W) uint8 from the camera (see
            ``envs.sim.scene.SemanticClass``).
        lidar: Return ``lidar``: ranges (channels * beams,) float32 [m].
        state: Return the privileged ``state`` vector (ego plus nearest vehicles).
        state_vehicles: Number of nearest vehicles in ``state``.
        state_range_m: Vehicles farther than this are left out of ``state`` [m].
        lidar_config: Lidar geometry.
    """

    camera: bool = True
    depth: bool = False
    semantic: bool = False
    lidar: bool = False
    state: bool = False
    state_vehicles: int = 8
    state_range_m: float = 100.0
    lidar_config: LidarConfig = field(default_factory=LidarConfig)

    def __post_init__(self) -> None:
        require(0 <= self.state_vehicles <= 64, "sensors.state_vehicles must be in [0, 64]")

    @property
    def renders(self) -> bool:
        """Whether any camera image (RGB, depth or semantic) is rendered."""
        return self.camera or self.depth or self.semantic


@dataclass(frozen=True)
class RewardConfig:
    """Reward weights; the reward is the sum of these terms each control step.

    Attributes:
        progress_per_m: Reward per metre of progress along the route [1/m].
        collision: Reward on a collision (negative) [1].
        off_road: Reward on each step off the road (negative) [1].
        steer_change: Penalty weight on |change of steering command| per step.
        accel_change: Penalty weight on |change of acceleration command| per step.
        speeding_per_mps: Penalty per m/s above the speed limit.
        success: Reward for completing the route.
    """

    progress_per_m: float = 0.1
    collision: float = -10.0
    off_road: float = -5.0
    steer_change: float = 0.1
    accel_change: float = 0.05
    speeding_per_mps: float = 0.02
    success: float = 10.0


@dataclass(frozen=True)
class VisualConfig:
    """Visual conditions, drawn per episode from the reset seed when ``randomize``.

    Attributes:
        randomize: Draw lighting, sky and textures from the seed (else fixed defaults).
        time_of_day: ``day``, ``dusk`` or ``night`` (darker ambient light and sky).
        texture_variants: Number of texture atlases the seed chooses from.
        light_elevation_rad / light_azimuth_rad: Ranges of the light direction [rad].
        ambient / diffuse: Ranges of the renderer's lighting coefficients.
        corruption: Image corruption applied to the RGB camera after rendering (name
            null = off; severity 1-5), drawn from the episode seed.
    """

    randomize: bool = True
    time_of_day: Literal["day", "dusk", "night"] = "day"
    texture_variants: int = 8
    light_elevation_rad: tuple[float, float] = (0.35, 1.3)
    light_azimuth_rad: tuple[float, float] = (0.0, 6.2832)
    ambient: tuple[float, float] = (0.55, 0.75)
    diffuse: tuple[float, float] = (0.35, 0.55)
    corruption: CorruptionConfig = field(default_factory=CorruptionConfig)

    def __post_init__(self) -> None:
        require(1 <= self.texture_variants <= 64, "visual.texture_variants must be in [1, 64]")
        require(self.ambient[0] <= self.ambient[1] and self.diffuse[0] <= self.diffuse[1],
                "visual.ambient and visual.diffuse must be increasing ranges")


@dataclass(frozen=True)
class BehaviorConfig:
    """The ``behavior`` action mode: discrete meta-actions executed by controllers.

    Attributes:
        steps_per_decision: Control steps each meta-action is held for (3 at 10 Hz is a
            policy at 3.3 Hz).
        speed_step_mps: Change of the target speed per ``faster`` / ``slower`` [m/s].
        max_speed_mps: Highest target speed ``faster`` can reach [m/s].
        max_decel_mps2: Largest deceleration the executor uses (``slower``, ``stop``) [m/s^2].
        lane_change_s: Duration of the lateral transition of a lane change [s].
    """

    steps_per_decision: int = 3
    speed_step_mps: float = 2.5
    max_speed_mps: float = 35.0
    max_decel_mps2: float = 4.0
    lane_change_s: float = 3.0

    def __post_init__(self) -> None:
        require(self.steps_per_decision >= 1, "action.behavior.steps_per_decision must be >= 1")
        require(self.speed_step_mps > 0 and self.max_speed_mps > 0 and self.max_decel_mps2 > 0
                and self.lane_change_s > 0, "action.behavior values must be positive")


@dataclass(frozen=True)
class TrajectoryConfig:
    """The ``trajectory`` action mode: ``[lateral offset, target speed, horizon]`` in
    [-1, 1], scaled to the ranges below, turned into a path and tracked.

    Attributes:
        steps_per_decision: Control steps each decision is held for (replanned after).
        max_offset_lanes: Lateral offset at action 1 [lane widths, left positive],
            relative to the centre of the lane the ego is in.
        max_speed_mps: Target speed at action 1 (action -1 is 0) [m/s].
        horizon_s: Range of the transition duration (action -1 to 1) [s].
    """

    steps_per_decision: int = 3
    max_offset_lanes: float = 1.5
    max_speed_mps: float = 35.0
    horizon_s: tuple[float, float] = (1.0, 5.0)

    def __post_init__(self) -> None:
        require(self.steps_per_decision >= 1,
                "action.trajectory.steps_per_decision must be >= 1")
        require(self.max_offset_lanes > 0 and self.max_speed_mps > 0,
                "action.trajectory.max_offset_lanes and max_speed_mps must be positive")
        require(0 < self.horizon_s[0] <= self.horizon_s[1],
                "action.trajectory.horizon_s must be an increasing range of positive seconds")


#: Valid values of ``action.mode``.
ACTION_MODES = ("control", "behavior", "trajectory")


@dataclass(frozen=True)
class ActionConfig:
    """Action interface (``action.mode``).

    ``control``: ``[steer, accel]`` in [-1, 1] (out-of-range values are clipped; NaN or
    inf raise ``ValueError``). ``behavior`` and ``trajectory`` are decision layers from
    :mod:`planning.action_modes` on top of ``control``; the env ids registered by
    :mod:`envs` apply them. The env class itself always takes ``control`` actions.
    """

    mode: Literal["control", "behavior", "trajectory"] = "control"
    behavior: BehaviorConfig = field(default_factory=BehaviorConfig)
    trajectory: TrajectoryConfig = field(default_factory=TrajectoryConfig)


@dataclass(frozen=True)
class EnvConfig:
    """Everything that is fixed when a driving env is constructed (any kind of map).

    Attributes:
        scene: pybullet scene building and culling.
        vehicle: Ego vehicle dynamics.
        traffic: Traffic density and behaviour.
        camera: Ego camera.
        sensors: Which observations are returned.
        visual: Lighting, textures and image corruptions.
        reward: Reward weights.
        action: Action interface.
        control_hz: Control (env step) rate [Hz].
        physics_hz: Physics substep rate [Hz]; a multiple of ``control_hz``.
        solver_iterations: Constraint-solver iterations per physics substep.
        max_steps: Step limit; reaching it truncates the episode with a ``timeout`` event.
        num_maps: Distinct maps: the map seed is ``map_seed_offset + seed % num_maps``
            (0: every episode seed gives its own map).
        map_seed_offset: Offset added to map seeds (to hold out maps for testing).
        initial_speed_factor: Ego start speed as a fraction of the speed limit.
        terminate_on_collision: End the episode on any collision.
        terminate_on_off_road: End the episode when the ego leaves the road.
    """

    scene: SceneConfig = field(default_factory=SceneConfig)
    vehicle: VehicleConfig = field(default_factory=VehicleConfig)
    traffic: TrafficConfig = field(default_factory=TrafficConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    sensors: SensorsConfig = field(default_factory=SensorsConfig)
    visual: VisualConfig = field(default_factory=VisualConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    action: ActionConfig = field(default_factory=ActionConfig)
    control_hz: float = 10.0
    physics_hz: float = 240.0
    solver_iterations: int = 10
    max_steps: int = 600
    num_maps: int = 0
    map_seed_offset: int = 0
    initial_speed_factor: float = 0.7
    terminate_on_collision: bool = True
    terminate_on_off_road: bool = True

    def __post_init__(self) -> None:
        require(1.0 <= self.control_hz <= 100.0, "control_hz must be in [1, 100]")
        ratio = self.physics_hz / self.control_hz
        require(abs(ratio - round(ratio)) < 1e-9 and ratio >= 1,
                f"physics_hz ({self.physics_hz}) must be a whole multiple of control_hz "
                f"({self.control_hz})")
        require(self.physics_hz <= 1000.0, "physics_hz must be <= 1000")
        require(self.max_steps >= 1, "max_steps must be >= 1")
        require(1 <= self.solver_iterations <= 200, "solver_iterations must be in [1, 200]")
        require(self.num_maps >= 0, "num_maps must be >= 0")
        require(0.0 <= self.initial_speed_factor <= 1.5, "initial_speed_factor must be in "
                "[0, 1.5]")

    @property
    def substeps(self) -> int:
        """Physics substeps per control step."""
        return int(round(self.physics_hz / self.control_hz))


@dataclass(frozen=True)
class HighwayEnvConfig(EnvConfig):
    """``Highway-v0``: the common settings plus the highway generator and start choice.

    Attributes:
        map: Procedural highway generator.
        ramp_start_prob: Probability that the ego starts on the on-ramp.
        route_end_margin_m: The route ends this far before the end of the road [m].
        max_steps: Step limit (a full route takes about 70 s at 10 Hz).
    """

    map: HighwayMapConfig = field(default_factory=HighwayMapConfig)
    ramp_start_prob: float = 0.2
    route_end_margin_m: float = 60.0
    max_steps: int = 1000

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0.0 <= self.ramp_start_prob <= 1.0, "ramp_start_prob must be in [0, 1]")


@dataclass(frozen=True)
class UrbanEnvConfig(EnvConfig):
    """``Urban-v0``: the common settings plus the urban grid, pedestrians and routes.

    Attributes:
        map: Procedural urban grid generator.
        pedestrians: Pedestrians at crossings.
        min_junctions: Junctions a route passes through at least.
        signal_time_offset_s: Range of the signal clock at the start of an episode [s].
        max_steps: Step limit (waiting at red lights takes time).
    """

    map: UrbanMapConfig = field(default_factory=UrbanMapConfig)
    pedestrians: PedestrianConfig = field(default_factory=PedestrianConfig)
    min_junctions: int = 3
    max_steps: int = 1500
    signal_time_offset_s: tuple[float, float] = (0.0, 60.0)
    initial_speed_factor: float = 0.3

    def __post_init__(self) -> None:
        super().__post_init__()
        require(1 <= self.min_junctions <= 20, "min_junctions must be in [1, 20]")


C = TypeVar("C", bound=EnvConfig)


def load_env_config(source: str | Path | Mapping[str, Any] | EnvConfig | None = None,
                    overrides: Sequence[str] = (),
                    cls: type[C] = HighwayEnvConfig) -> C:  # type: ignore[assignment]
    """Load an env config of type ``cls`` from a YAML path, a name in ``configs/env/``, a
    mapping or defaults, applying ``key.sub=value`` overrides."""
    if isinstance(source, EnvConfig):
        if not overrides and isinstance(source, cls):
            return source
        from common.config import to_dict

        source = to_dict(source)
    return load_config(cls, source, overrides, group="env")
