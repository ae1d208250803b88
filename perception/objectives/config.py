"""The composed configuration of a self-supervised pre-training objective."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from common.config import require
from perception.objectives.atc import ATCConfig
from perception.objectives.aux_heads import AuxHeadsConfig
from perception.objectives.byol import BYOLConfig
from perception.objectives.curl import CURLConfig
from perception.objectives.mae import MAEConfig

#: Names accepted by :func:`perception.objectives.build_objective`.
OBJECTIVE_NAMES = ("curl", "byol", "mae", "atc")

ObjectiveName = Literal["curl", "byol", "mae", "atc"]


@dataclass(frozen=True)
class ObjectiveConfig:
    """Which objective, the settings of each, and the auxiliary heads.

    Only the sub-config of the selected ``name`` is used; keeping all of them lets a
    YAML file switch objectives with a single ``name=...`` override.

    Attributes:
        name: ``curl``, ``byol``, ``mae`` or ``atc``.
        curl / byol / mae / atc: Per-objective hyper-parameters.
        aux: Auxiliary heads on simulator labels (none by default).
    """

    name: ObjectiveName = "curl"
    curl: CURLConfig = field(default_factory=CURLConfig)
    byol: BYOLConfig = field(default_factory=BYOLConfig)
    mae: MAEConfig = field(default_factory=MAEConfig)
    atc: ATCConfig = field(default_factory=ATCConfig)
    aux: AuxHeadsConfig = field(default_factory=AuxHeadsConfig)

    def __post_init__(self) -> None:
        require(self.name in OBJECTIVE_NAMES,
                f"objective name '{self.name}' is unknown; valid: {', '.join(OBJECTIVE_NAMES)}")


__all__ = ["OBJECTIVE_NAMES", "ObjectiveConfig", "ObjectiveName"]
