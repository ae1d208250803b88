"""Planning on map geometry: routes (A*), controllers, and, next, the behaviour layer,
trajectories and the expert. Pure numpy; imports ``envs`` only for map data.

IDM and MOBIL live in :mod:`envs.traffic.idm` (the traffic uses them, and ``envs`` may not
import ``planning``); they are re-exported here for planners.
"""

from envs.traffic.idm import (
    IDMParams,
    MOBILParams,
    idm_acceleration,
    idm_desired_gap,
    idm_equilibrium_gap,
    mobil_decision,
)

__all__ = ["IDMParams", "MOBILParams", "idm_acceleration", "idm_desired_gap",
           "idm_equilibrium_gap", "mobil_decision"]
