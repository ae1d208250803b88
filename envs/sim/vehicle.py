"""The ego car: a four-wheeled rigid multibody driven by pybullet dynamics.

The car is one pybullet multibody built without a URDF file:

* the base is the chassis (box collider; visual body box plus a darker cabin box); its
  frame sits at the centre of mass, above the middle of the wheelbase;
* each front wheel hangs on a steering knuckle (revolute joint about the chassis z axis
  through the wheel centre, so tyre forces exert no moment about the steering axis),
  which carries the wheel on a revolute spin joint about the lateral y axis;
* each rear wheel sits directly on a spin joint of the chassis.

Wheels collide as spheres (robust rolling on any mesh) and are drawn as cylinders. There
is no suspension: the tyres are rigid and grip by Coulomb friction (``tire_friction``),
so at moderate lateral acceleration the car follows the kinematic bicycle model.

Actuation uses joint motors, which pybullet keeps between simulation steps, so one
:meth:`EgoVehicle.apply_control` per control period holds over all physics substeps:

* steering: a position motor per front knuckle with Ackermann targets, its
  ``maxVelocity`` limiting the steering rate;
* drive (rear-wheel): a velocity motor aimed at the top wheel speed whose force limit is
  the drive torque, i.e. a constant torque until the top speed is reached;
* brakes and rolling resistance: velocity motors aimed at zero wheel speed whose force
  limit is the brake (or rolling-resistance) torque, so they never drive the car
  backwards and hold it once stopped.

World frame: x east, y north, z up, ground plane at z = 0; yaw is counter-clockwise from
+x. Every pybullet call names the client, so many worlds can share one process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pybullet as p

from common.config import require

#: Standard gravity [m/s^2]; the caller is expected to set the same value in pybullet.
GRAVITY_MPS2 = 9.81

# Link indices of the multibody (createMultiBody numbers links in the given order).
_FL_STEER, _FL_WHEEL, _FR_STEER, _FR_WHEEL, _RL_WHEEL, _RR_WHEEL = range(6)
_STEER_JOINTS = (_FL_STEER, _FR_STEER)
#: Wheel joints in the order front-left, front-right, rear-left, rear-right.
_WHEEL_JOINTS = (_FL_WHEEL, _FR_WHEEL, _RL_WHEEL, _RR_WHEEL)

#: Mass of one steering knuckle [kg] (taken out of the chassis mass).
_KNUCKLE_MASS_KG = 2.0
#: Ground clearance of the chassis collision box [m].
_CLEARANCE_M = 0.18
#: Height of the centre of mass above the ground [m] (capped at the middle of the body).
_COM_HEIGHT_M = 0.55
#: Visual width of a wheel [m].
_WHEEL_WIDTH_M = 0.22
#: Fraction of ``max_speed_mps`` over which the drive force fades out to zero.
_TAPER_FRACTION = 0.15
#: Largest steering-motor torque [N m]; the motor only fights knuckle inertia.
_STEER_TORQUE_NM = 4000.0
#: Position gain of the steering motors (fraction of the error removed per step).
_STEER_GAIN = 0.3
#: Torsional (spinning) friction of a tyre contact [m] (torque per newton of load). Zero:
#: the four lateral-friction rows already fix the yaw of the car, and the extra
#: torsional rows keep the solver from converging early (2-3x the step cost at rest).
_SPINNING_FRICTION_M = 0.0
#: Highest joint speed pybullet may reach [rad/s] (its default of 100 caps ~33 m/s).
_MAX_JOINT_SPEED_RADPS = 1000.0


@dataclass(frozen=True)
class VehicleConfig:
    """Geometry, mass and actuator limits of the ego car (SI units).

    Attributes:
        length_m: Chassis length, bumper to bumper [m].
        width_m: Chassis width [m].
        height_m: Overall height, ground to roof [m].
        wheelbase_m: Distance between the front and rear axles [m].
        track_m: Distance between the left and right wheel centres [m].
        wheel_radius_m: Tyre radius [m].
        mass_kg: Total mass of the car, wheels included [kg].
        wheel_mass_kg: Mass of one wheel [kg] (sets the wheel spin inertia).
        max_steer_rad: Largest steering angle of the equivalent bicycle model [rad]; the
            inner front wheel turns somewhat more (Ackermann geometry).
        steer_rate_radps: Largest rate of change of the steering angle [rad/s].
        max_accel_mps2: Acceleration at full throttle on flat ground [m/s^2].
        max_brake_mps2: Deceleration at full brake on flat ground [m/s^2].
        max_speed_mps: Top speed [m/s]; the drive force fades out just below it.
        tire_friction: Tyre-road Coulomb friction coefficient (pybullet multiplies it with
            the ground's lateral friction).
        rolling_resistance: Rolling-resistance coefficient (resisting force per unit of
            weight) acting while coasting; throttle commands compensate for it.
        color_rgba: Body colour, red, green, blue, alpha in [0, 1].
    """

    length_m: float = 4.5
    width_m: float = 1.8
    height_m: float = 1.45
    wheelbase_m: float = 2.7
    track_m: float = 1.55
    wheel_radius_m: float = 0.33
    mass_kg: float = 1500.0
    wheel_mass_kg: float = 20.0
    max_steer_rad: float = 0.6
    steer_rate_radps: float = 1.0
    max_accel_mps2: float = 3.5
    max_brake_mps2: float = 8.0
    max_speed_mps: float = 45.0
    tire_friction: float = 1.0
    rolling_resistance: float = 0.015
    color_rgba: tuple[float, float, float, float] = (0.85, 0.12, 0.10, 1.0)

    def __post_init__(self) -> None:
        require(1.0 <= self.length_m <= 20.0, "vehicle.length_m must be in [1, 20]")
        require(0.5 <= self.width_m <= 3.0, "vehicle.width_m must be in [0.5, 3]")
        require(0.5 <= self.height_m <= 5.0, "vehicle.height_m must be in [0.5, 5]")
        require(0.5 <= self.wheelbase_m < self.length_m,
                "vehicle.wheelbase_m must be >= 0.5 and < vehicle.length_m")
        require(0.3 <= self.track_m <= self.width_m,
                "vehicle.track_m must be >= 0.3 and <= vehicle.width_m")
        require(0.1 <= self.wheel_radius_m <= 1.0, "vehicle.wheel_radius_m must be in [0.1, 1]")
        require(2.0 * self.wheel_radius_m < self.wheelbase_m,
                "vehicle.wheel_radius_m must be < vehicle.wheelbase_m / 2")
        require(self.wheel_radius_m + 0.2 < self.height_m,
                "vehicle.height_m must exceed vehicle.wheel_radius_m + 0.2")
        require(self.wheel_mass_kg > 0.0, "vehicle.wheel_mass_kg must be > 0")
        require(self.mass_kg >= 4.0 * (self.wheel_mass_kg + _KNUCKLE_MASS_KG) + 50.0,
                "vehicle.mass_kg must exceed the wheel masses by at least 50 kg "
                "(and so must be > 0)")
        require(0.0 < self.max_steer_rad <= 1.2, "vehicle.max_steer_rad must be in (0, 1.2]")
        require(self.wheelbase_m / math.tan(self.max_steer_rad) > self.track_m / 2.0 + 0.1,
                "vehicle.max_steer_rad is too large: the turning radius wheelbase / "
                "tan(max_steer_rad) must exceed track_m / 2 + 0.1 m")
        require(self.steer_rate_radps > 0.0, "vehicle.steer_rate_radps must be > 0")
        require(self.max_accel_mps2 > 0.0, "vehicle.max_accel_mps2 must be > 0")
        require(self.max_brake_mps2 > 0.0, "vehicle.max_brake_mps2 must be > 0")
        require(0.0 < self.max_speed_mps <= 100.0, "vehicle.max_speed_mps must be in (0, 100]")
        require(self.tire_friction > 0.0, "vehicle.tire_friction must be > 0")
        require(0.0 <= self.rolling_resistance < 0.2,
                "vehicle.rolling_resistance must be in [0, 0.2)")
        require(len(self.color_rgba) == 4 and all(0.0 <= c <= 1.0 for c in self.color_rgba),
                "vehicle.color_rgba must be 4 values in [0, 1]")


class VehicleState(NamedTuple):
    """Kinematic state of the ego car.

    Attributes:
        x: Reference point (centre of the chassis footprint, at ground level), east [m].
        y: Reference point, north [m].
        z: Reference point height [m] (about 0 on flat ground at z = 0).
        yaw: Heading, counter-clockwise from +x [rad], in (-pi, pi].
        vx: Velocity of the centre of mass along world x [m/s].
        vy: Velocity of the centre of mass along world y [m/s].
        speed_mps: Signed forward speed along the heading [m/s].
        yaw_rate_radps: Yaw rate, counter-clockwise positive [rad/s].
        steer_rad: Mean of the two front-wheel steering angles [rad] (left positive).
        steer_cmd: Last steering command in [-1, 1].
        accel_cmd: Last acceleration command in [-1, 1].
    """

    x: float
    y: float
    z: float
    yaw: float
    vx: float
    vy: float
    speed_mps: float
    yaw_rate_radps: float
    steer_rad: float
    steer_cmd: float
    accel_cmd: float


def ackermann_angles(wheelbase_m: float, track_m: float, delta_rad: float) -> tuple[float, float]:
    """Left and right front-wheel angles for a bicycle-model steering angle.

    The turning centre lies on the rear-axle line at signed radius
    ``R = wheelbase / tan(delta)`` from the rear-axle centre (positive to the left);
    each front wheel is aimed perpendicular to the line joining it to that centre.

    Args:
        wheelbase_m: Axle distance [m].
        track_m: Distance between the front wheel centres [m].
        delta_rad: Bicycle-model steering angle [rad], left positive, |delta| < pi / 2.

    Returns:
        ``(left, right)`` wheel angles [rad], left positive.
    """
    t = math.tan(delta_rad)
    half = track_m / 2.0
    # atan(L / (R -/+ t/2)) rewritten with tan(delta) = L / R: smooth through delta = 0.
    left = math.atan2(wheelbase_m * t, wheelbase_m - half * t)
    right = math.atan2(wheelbase_m * t, wheelbase_m + half * t)
    return left, right


def bicycle_angle(wheelbase_m: float, track_m: float, left_rad: float,
                  right_rad: float) -> float:
    """Bicycle-model steering angle matching two front-wheel angles (inverse Ackermann).

    Each wheel angle gives one estimate of ``tan(delta)``; their mean is returned, so
    for wheels set by :func:`ackermann_angles` the result is exact.

    Args:
        wheelbase_m: Axle distance [m].
        track_m: Distance between the front wheel centres [m].
        left_rad: Left front-wheel angle [rad], left positive.
        right_rad: Right front-wheel angle [rad], left positive.

    Returns:
        Bicycle-model steering angle [rad].
    """
    half = track_m / 2.0
    tl, tr = math.tan(left_rad), math.tan(right_rad)
    t_left = wheelbase_m * tl / (wheelbase_m + half * tl)
    t_right = wheelbase_m * tr / (wheelbase_m - half * tr)
    return math.atan(0.5 * (t_left + t_right))


class EgoVehicle:
    """The ego car in one pybullet client.

    The caller owns the world: it creates the ground (z = 0), sets gravity
    (``-GRAVITY_MPS2``) and the physics time step, and calls ``stepSimulation``.

    Args:
        client: pybullet client id.
        cfg: Vehicle parameters.
        x: Initial reference-point x [m].
        y: Initial reference-point y [m].
        yaw: Initial heading [rad].
        speed_mps: Initial forward speed [m/s] (wheels spin to match).
        drawn: Give the car its visual shapes (body, cabin, wheels). ``False`` gives
            every link a zero-size shape instead, which no renderer draws: for a camera
            inside the car under EGL, whose segmentation mask (unlike TinyRenderer's)
            keeps bodies made transparent. Physics is the same either way.

    Attributes:
        body_id: pybullet body id of the car.
        client: pybullet client id.
        cfg: Vehicle parameters.
    """

    def __init__(self, client: int, cfg: VehicleConfig, x: float, y: float, yaw: float,
                 speed_mps: float = 0.0, drawn: bool = True) -> None:
        self.client = client
        self.cfg = cfg
        r = cfg.wheel_radius_m
        #: Height of the centre of mass (base frame) above the ground [m].
        self.com_height_m = min(_COM_HEIGHT_M, 0.5 * (r + cfg.height_m))
        # Wheel spin inertia as a uniform disc [kg m^2] and the total rolling inertia
        # seen at the ground, i.e. the effective mass for longitudinal motion [kg].
        self._wheel_inertia = 0.5 * cfg.wheel_mass_kg * r * r
        self._effective_mass_kg = cfg.mass_kg + 4.0 * self._wheel_inertia / (r * r)
        # Rolling-resistance torque per wheel [N m] (even load split is close enough).
        self._rr_torque_nm = cfg.rolling_resistance * cfg.mass_kg * GRAVITY_MPS2 * r / 4.0
        self._top_wheel_speed = cfg.max_speed_mps / r
        self.body_id = self._build(drawn)
        self.steer_cmd = 0.0
        self.accel_cmd = 0.0
        self.reset(x, y, yaw, speed_mps)

    # ------------------------------------------------------------------ build
    def _build(self, drawn: bool = True) -> int:
        """Create the multibody and set its dynamics; return the body id.

        Args:
            drawn: Use the visual shapes made here; ``False`` gives every link a
                zero-size one instead (see the class docstring).
        """
        cfg, c = self.cfg, self.client
        r = cfg.wheel_radius_m
        h = self.com_height_m
        half_l, half_w = cfg.length_m / 2.0, cfg.width_m / 2.0
        body_h = cfg.height_m - _CLEARANCE_M
        # Chassis collision: one box from the clearance to the roof (frame at the CoM).
        chassis_col = p.createCollisionShape(
            p.GEOM_BOX, halfExtents=[half_l, half_w, body_h / 2.0],
            collisionFramePosition=[0.0, 0.0, _CLEARANCE_M + body_h / 2.0 - h],
            physicsClientId=c)
        # Visual: lower body up to the belt line, a narrower cabin above it.
        belt = _CLEARANCE_M + 0.55 * body_h
        cabin_h = cfg.height_m - belt
        chassis_vis = p.createVisualShapeArray(
            shapeTypes=[p.GEOM_BOX, p.GEOM_BOX],
            halfExtents=[[half_l, half_w, (belt - _CLEARANCE_M) / 2.0],
                         [0.28 * cfg.length_m, 0.45 * cfg.width_m, cabin_h / 2.0]],
            visualFramePositions=[[0.0, 0.0, (belt + _CLEARANCE_M) / 2.0 - h],
                                  [-0.06 * cfg.length_m, 0.0, (belt + cfg.height_m) / 2.0 - h]],
            rgbaColors=[list(cfg.color_rgba), [0.12, 0.13, 0.15, 1.0]],
            physicsClientId=c)
        wheel_col = p.createCollisionShape(p.GEOM_SPHERE, radius=r, physicsClientId=c)
        # pybullet cylinders run along their local z; turn them to lie along y (the axle).
        wheel_vis = p.createVisualShape(
            p.GEOM_CYLINDER, radius=r, length=_WHEEL_WIDTH_M,
            visualFrameOrientation=[math.sin(math.pi / 4.0), 0.0, 0.0, math.cos(math.pi / 4.0)],
            rgbaColor=[0.08, 0.08, 0.08, 1.0], physicsClientId=c)
        if not drawn:
            # A link without a visual shape is drawn from its collision shape, so every
            # link gets a shape of zero size instead: its triangles are degenerate and
            # cover no pixel, not even in EGL's segmentation mask. (The unused shapes
            # above cost nothing: a visual shape is only drawn through a body.)
            chassis_vis = wheel_vis = p.createVisualShape(
                p.GEOM_BOX, halfExtents=[0.0, 0.0, 0.0], rgbaColor=[1.0, 1.0, 1.0, 0.0],
                physicsClientId=c)
        ax, ay, az = cfg.wheelbase_m / 2.0, cfg.track_m / 2.0, r - h
        zero, ident = [0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]
        # (mass, collision, visual, position in parent, parent index (0 = base), axis)
        links = [
            (_KNUCKLE_MASS_KG, -1, -1, [ax, ay, az], 0, [0, 0, 1]),      # FL steer
            (cfg.wheel_mass_kg, wheel_col, wheel_vis, zero, 1, [0, 1, 0]),  # FL wheel
            (_KNUCKLE_MASS_KG, -1, -1, [ax, -ay, az], 0, [0, 0, 1]),     # FR steer
            (cfg.wheel_mass_kg, wheel_col, wheel_vis, zero, 3, [0, 1, 0]),  # FR wheel
            (cfg.wheel_mass_kg, wheel_col, wheel_vis, [-ax, ay, az], 0, [0, 1, 0]),  # RL
            (cfg.wheel_mass_kg, wheel_col, wheel_vis, [-ax, -ay, az], 0, [0, 1, 0]),  # RR
        ]
        chassis_mass = cfg.mass_kg - 4.0 * cfg.wheel_mass_kg - 2.0 * _KNUCKLE_MASS_KG
        body = p.createMultiBody(
            baseMass=chassis_mass,
            baseCollisionShapeIndex=chassis_col,
            baseVisualShapeIndex=chassis_vis,
            basePosition=[0.0, 0.0, h],
            linkMasses=[lk[0] for lk in links],
            linkCollisionShapeIndices=[lk[1] for lk in links],
            linkVisualShapeIndices=[lk[2] for lk in links],
            linkPositions=[lk[3] for lk in links],
            linkOrientations=[ident] * len(links),
            linkInertialFramePositions=[zero] * len(links),
            linkInertialFrameOrientations=[ident] * len(links),
            linkParentIndices=[lk[4] for lk in links],
            linkJointTypes=[p.JOINT_REVOLUTE] * len(links),
            linkJointAxis=[lk[5] for lk in links],
            physicsClientId=c)
        # Explicit inertias: a uniform box for the chassis, discs for the wheels.
        lx, ly, lz = cfg.length_m, cfg.width_m, body_h
        m = chassis_mass
        p.changeDynamics(body, -1, linearDamping=0.0, angularDamping=0.0,
                         localInertiaDiagonal=[m * (ly * ly + lz * lz) / 12.0,
                                               m * (lx * lx + lz * lz) / 12.0,
                                               m * (lx * lx + ly * ly) / 12.0],
                         lateralFriction=0.5, physicsClientId=c)
        mw, iw = cfg.wheel_mass_kg, self._wheel_inertia
        i_side = mw * (3.0 * r * r + _WHEEL_WIDTH_M ** 2) / 12.0
        k = 0.4 * _KNUCKLE_MASS_KG * 0.1 ** 2  # knuckle: a 2 kg ball of 0.1 m radius
        for link in _STEER_JOINTS:
            p.changeDynamics(body, link, localInertiaDiagonal=[k, k, k], jointDamping=0.0,
                             physicsClientId=c)
        for link in _WHEEL_JOINTS:
            p.changeDynamics(body, link, localInertiaDiagonal=[i_side, iw, i_side],
                             lateralFriction=cfg.tire_friction, rollingFriction=0.0,
                             spinningFriction=_SPINNING_FRICTION_M, restitution=0.0,
                             jointDamping=0.0, physicsClientId=c)
        # pybullet 3.2.7 silently ignores every other argument given together with
        # maxJointVelocity, so it gets a call of its own (the limit is per body).
        p.changeDynamics(body, _RR_WHEEL, maxJointVelocity=_MAX_JOINT_SPEED_RADPS,
                         physicsClientId=c)
        # Replace the default joint motors: the wheels get the rolling-resistance motor,
        # the knuckles a position motor (set in reset()).
        p.setJointMotorControlArray(body, list(_WHEEL_JOINTS), p.VELOCITY_CONTROL,
                                    targetVelocities=[0.0] * 4,
                                    forces=[self._rr_torque_nm] * 4, physicsClientId=c)
        return int(body)

    # ------------------------------------------------------------------ control
    def reset(self, x: float, y: float, yaw: float, speed_mps: float = 0.0) -> None:
        """Teleport the car onto the ground at (x, y) with heading ``yaw``.

        Steering is centred, the body moves forward at ``speed_mps`` without rotating and
        the wheels spin at the matching rolling speed; commands are zeroed (coasting).
        The ground is assumed flat at z = 0.

        Args:
            x: Reference-point x [m].
            y: Reference-point y [m].
            yaw: Heading [rad].
            speed_mps: Forward speed [m/s].
        """
        c, b = self.client, self.body_id
        p.resetBasePositionAndOrientation(
            b, [x, y, self.com_height_m], [0.0, 0.0, math.sin(yaw / 2.0), math.cos(yaw / 2.0)],
            physicsClientId=c)
        p.resetBaseVelocity(b, [speed_mps * math.cos(yaw), speed_mps * math.sin(yaw), 0.0],
                            [0.0, 0.0, 0.0], physicsClientId=c)
        for j in _STEER_JOINTS:
            p.resetJointState(b, j, 0.0, 0.0, physicsClientId=c)
        spin = speed_mps / self.cfg.wheel_radius_m
        for j in _WHEEL_JOINTS:
            p.resetJointState(b, j, 0.0, spin, physicsClientId=c)
        self.apply_control(0.0, 0.0)

    def apply_control(self, steer: float, accel: float) -> None:
        """Set the steering and longitudinal actuators until the next call.

        Args:
            steer: Steering command in [-1, 1] (left positive); target bicycle-model
                angle ``steer * max_steer_rad``, reached at ``steer_rate_radps``.
            accel: Longitudinal command in [-1, 1]. Positive: rear-wheel drive torque for
                an acceleration of ``accel * max_accel_mps2`` on flat ground (fading out
                towards ``max_speed_mps``); negative: brakes on all wheels for a
                deceleration of ``|accel| * max_brake_mps2`` down to standstill (never
                backwards); zero: coast against rolling resistance.
        """
        cfg, c, b = self.cfg, self.client, self.body_id
        self.steer_cmd, self.accel_cmd = float(steer), float(accel)
        # Steering: Ackermann targets. The rate limits are shared out so that both wheels
        # arrive together and the equivalent bicycle angle turns at steer_rate_radps.
        delta = steer * cfg.max_steer_rad
        left, right = ackermann_angles(cfg.wheelbase_m, cfg.track_m, delta)
        (cur_l, _, _, _), (cur_r, _, _, _) = p.getJointStates(b, _STEER_JOINTS,
                                                              physicsClientId=c)
        d_delta = max(abs(delta - bicycle_angle(cfg.wheelbase_m, cfg.track_m, cur_l, cur_r)),
                      1e-6)
        for joint, target, cur in ((_FL_STEER, left, cur_l), (_FR_STEER, right, cur_r)):
            ratio = min(max(abs(target - cur) / d_delta, 0.05), 3.0)
            p.setJointMotorControl2(
                b, joint, p.POSITION_CONTROL, targetPosition=target, targetVelocity=0.0,
                force=_STEER_TORQUE_NM, positionGain=_STEER_GAIN, velocityGain=1.0,
                maxVelocity=cfg.steer_rate_radps * ratio, physicsClientId=c)
        # Longitudinal: torques about the wheel axles [N m].
        r = cfg.wheel_radius_m
        rr = self._rr_torque_nm
        if accel > 0.0:
            (vx, vy, _), _ = p.getBaseVelocity(b, physicsClientId=c)
            _, quat = p.getBasePositionAndOrientation(b, physicsClientId=c)
            cy, sy = _heading(quat)
            speed = vx * cy + vy * sy
            band = _TAPER_FRACTION * cfg.max_speed_mps
            fade = min(max((cfg.max_speed_mps - speed) / band, 0.0), 1.0)
            a = accel * cfg.max_accel_mps2 * fade
            # Per driven wheel: half the force for the whole rolling mass plus the rolling
            # resistance of one (undriven, motor-braked) front wheel, so the net
            # acceleration is exactly the commanded one.
            drive = 0.5 * self._effective_mass_kg * a * r + rr
            targets = [0.0, 0.0, self._top_wheel_speed, self._top_wheel_speed]
            forces = [rr, rr, drive, drive]
        elif accel < 0.0:
            a = max(-accel * cfg.max_brake_mps2, cfg.rolling_resistance * GRAVITY_MPS2)
            total = self._effective_mass_kg * a * r
            # Ideal brake balance: each axle's share follows its load under this
            # deceleration (weight transfer h a / (g L) towards the front).
            front = min(max(0.5 + self.com_height_m * a / (GRAVITY_MPS2 * cfg.wheelbase_m),
                            0.5), 0.85)
            targets = [0.0] * 4
            forces = [0.5 * front * total] * 2 + [0.5 * (1.0 - front) * total] * 2
        else:
            targets = [0.0] * 4
            forces = [rr] * 4
        p.setJointMotorControlArray(b, _WHEEL_JOINTS, p.VELOCITY_CONTROL,
                                    targetVelocities=targets, forces=forces,
                                    physicsClientId=c)

    # ------------------------------------------------------------------ queries
    def state(self) -> VehicleState:
        """Current kinematic state.

        Returns:
            The state, read with three pybullet queries (base pose, base velocity and
            the two steering joints).
        """
        c, b = self.client, self.body_id
        pos, quat = p.getBasePositionAndOrientation(b, physicsClientId=c)
        (vx, vy, _), (_, _, wz) = p.getBaseVelocity(b, physicsClientId=c)
        (sl, _, _, _), (sr, _, _, _) = p.getJointStates(b, _STEER_JOINTS, physicsClientId=c)
        qx, qy, qz, qw = quat
        cy, sy = _heading(quat)
        h = self.com_height_m
        # Reference point = CoM minus h along the body's up axis (third rotation column).
        up_x = 2.0 * (qx * qz + qw * qy)
        up_y = 2.0 * (qy * qz - qw * qx)
        up_z = 1.0 - 2.0 * (qx * qx + qy * qy)
        return VehicleState(
            x=pos[0] - h * up_x, y=pos[1] - h * up_y, z=pos[2] - h * up_z,
            yaw=math.atan2(sy, cy), vx=vx, vy=vy, speed_mps=vx * cy + vy * sy,
            yaw_rate_radps=wz, steer_rad=0.5 * (sl + sr),
            steer_cmd=self.steer_cmd, accel_cmd=self.accel_cmd)

    def footprint(self) -> np.ndarray:
        """World corners of the chassis rectangle.

        Returns:
            Array (4, 2) of corner (x, y) [m] in the order front-left, rear-left,
            rear-right, front-right (counter-clockwise seen from above).
        """
        st = self.state()
        c, s = math.cos(st.yaw), math.sin(st.yaw)
        hl, hw = self.cfg.length_m / 2.0, self.cfg.width_m / 2.0
        local = np.array([[hl, hw], [-hl, hw], [-hl, -hw], [hl, -hw]])
        rot = np.array([[c, -s], [s, c]])
        return local @ rot.T + np.array([st.x, st.y])


def _heading(quat: tuple[float, ...]) -> tuple[float, float]:
    """Cosine and sine of the yaw of an ``(x, y, z, w)`` quaternion."""
    qx, qy, qz, qw = quat
    fx = 1.0 - 2.0 * (qy * qy + qz * qz)  # world x, y of the body's forward axis
    fy = 2.0 * (qx * qy + qw * qz)
    n = math.hypot(fx, fy)
    if n < 1e-9:  # pointing straight up or down: yaw undefined
        return 1.0, 0.0
    return fx / n, fy / n


__all__ = [
    "GRAVITY_MPS2",
    "EgoVehicle",
    "VehicleConfig",
    "VehicleState",
    "ackermann_angles",
    "bicycle_angle",
]


def vehicle_to_world(x: float, y: float, z: float, yaw: float,
                     offset_xyz: tuple[float, float, float]) -> tuple[float, float, float]:
    """World position of a point mounted at ``offset_xyz`` in the vehicle frame (x forward,
    y left, z up) of a vehicle at (``x``, ``y``, ``z``) heading ``yaw`` [m, rad]."""
    ox, oy, oz = offset_xyz
    c, s = math.cos(yaw), math.sin(yaw)
    return x + c * ox - s * oy, y + s * ox + c * oy, z + oz
