"""Safety measures of the ego's situation that several layers share: the time to
collision with the vehicle ahead on the ego's path (recorded in every evaluation episode,
:mod:`evaluation.recording`, and a training reward-shaping term, :mod:`agents.shaping`).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from envs.driving_env import DrivingEnv
from planning.reference_path import lanes_ahead

#: TTC looks this far ahead along the ego's path (vehicle centres) [m].
TTC_RANGE_M = 100.0
#: Sampling step of the ego's path for TTC [m].
PATH_STEP_M = 2.0


def ego_path(env: DrivingEnv) -> NDArray[np.float64] | None:
    """Centre line (K, 2) of the ego's lane from its lane point, continued along the route
    (or the straightest successor), about :data:`TTC_RANGE_M` plus a margin long."""
    lp, rm = env.lane_point, env.road_map
    if lp is None or rm is None:
        return None
    pieces = []
    for k, span in enumerate(lanes_ahead(rm, lp.lane, lp.s, TTC_RANGE_M + 20.0, env.route)):
        n = max(int(math.ceil((span.s_to - span.s_from) / PATH_STEP_M)), 1)
        s = np.linspace(span.s_from, span.s_to, n + 1)
        pieces.append(rm.lane(span.lane).position(s if k == 0 else s[1:]))
    xy = np.concatenate(pieces)
    keep = np.concatenate([[True], np.hypot(*np.diff(xy, axis=0).T) > 1e-6])
    xy = xy[keep]
    return xy if len(xy) >= 2 else None


def project_onto_path(path: NDArray[np.float64], points: NDArray[np.float64]
                      ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Arc length, signed lateral offset and path heading at the projection of each point
    onto a polyline (vectorised over points and segments)."""
    a, ab = path[:-1], np.diff(path, axis=0)
    seg_len = np.hypot(ab[:, 0], ab[:, 1])
    s0 = np.concatenate([[0.0], np.cumsum(seg_len)])[:-1]
    ap = points[:, None, :] - a[None, :, :]
    t = np.clip(np.einsum("mkj,kj->mk", ap, ab) / np.maximum(seg_len**2, 1e-12), 0.0, 1.0)
    rel = ap - t[..., None] * ab[None, :, :]
    dist = np.hypot(rel[..., 0], rel[..., 1])
    k = np.argmin(dist, axis=1)
    rows = np.arange(len(points))
    cross = ab[k, 0] * ap[rows, k, 1] - ab[k, 1] * ap[rows, k, 0]
    s = s0[k] + t[rows, k] * seg_len[k]
    d = np.where(cross >= 0.0, 1.0, -1.0) * dist[rows, k]
    return s, d, np.arctan2(ab[k, 1], ab[k, 0])


def time_to_collision(env: DrivingEnv) -> tuple[float, float]:
    """Time to collision with the nearest vehicle ahead on the ego's path, and the
    distance to the nearest traffic vehicle.

    The ego's path is the centre line of its lane from its lane point onwards, continued
    along the route (:func:`planning.reference_path.lanes_ahead`); the ego sits at arc
    length 0 with its lateral offset ``d``. Every active traffic vehicle is projected
    onto the path (so curves and lanes ahead count, and vehicles changing lanes are
    placed where they are); it is ahead on the path if its centre lies within
    (0, :data:`TTC_RANGE_M`] along the path and it overlaps the ego laterally
    (``|d_vehicle - d_ego| < (w_ego + w_vehicle) / 2``). For the nearest such vehicle,
    at constant speeds, ``TTC = gap / closing speed`` with the bumper-to-bumper gap
    along the path and the speeds projected on the path direction: ``inf`` when it is
    not closing in, 0 when the boxes already overlap. Pedestrians are not vehicles and
    are left out.

    Args:
        env: The bare env after a step.

    Returns:
        ``(ttc_s, nearest_vehicle_m)``: the TTC [s] (``inf`` with no vehicle ahead or off
        the map) and the centre distance to the nearest active vehicle [m] (``inf`` with
        none).
    """
    t = env.traffic
    active = np.flatnonzero(t.active)
    if len(active) == 0:
        return math.inf, math.inf
    st = env.state
    xy = np.column_stack([t.x[active], t.y[active]])
    nearest = float(np.min(np.hypot(xy[:, 0] - st.x, xy[:, 1] - st.y)))
    path = ego_path(env)
    lp = env.lane_point
    if path is None or lp is None:
        return math.inf, nearest
    s, d, heading = project_onto_path(path, xy)
    veh = env.config.vehicle
    on_path = (s > 0.0) & (s <= TTC_RANGE_M) & (
        np.abs(d - lp.d) < (veh.width_m + t.width[active]) / 2.0)
    if not on_path.any():
        return math.inf, nearest
    i = int(np.flatnonzero(on_path)[np.argmin(s[on_path])])
    gap = float(s[i]) - (veh.length_m + float(t.length[active[i]])) / 2.0
    if gap <= 0.0:
        return 0.0, nearest
    path_heading0 = math.atan2(path[1, 1] - path[0, 1], path[1, 0] - path[0, 0])
    ego_along = st.speed_mps * math.cos(st.yaw - path_heading0)
    other_along = float(t.v[active[i]]) * math.cos(float(t.yaw[active[i]]) - float(heading[i]))
    closing = ego_along - other_along
    return (gap / closing if closing > 1e-9 else math.inf), nearest


__all__ = ["PATH_STEP_M", "TTC_RANGE_M", "ego_path", "project_onto_path",
           "time_to_collision"]
