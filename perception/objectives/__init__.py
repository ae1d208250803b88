"""Self-supervised pre-training objectives for perception encoders.

``build_objective(name, encoder, config, augment)`` gives an :class:`Objective`:
``curl`` (contrastive with a momentum key encoder), ``byol``, ``mae`` (masked
autoencoding; token masking for timm ViTs, pixel masking otherwise) or ``atc``
(augmented temporal contrast; the batch needs ``frames_next``), optionally with
auxiliary heads on simulator labels (:class:`WithAuxiliary`).
"""

from __future__ import annotations

from torch import nn

from common.config import ConfigError
from perception.objectives.atc import ATC, ATCConfig
from perception.objectives.aux_heads import (
    DRIVING_HEADS,
    AuxHeadsConfig,
    AuxiliaryHeads,
    HeadConfig,
    WithAuxiliary,
    build_aux_heads,
)
from perception.objectives.base import AugmentFn, Objective, ema_update_, info_nce
from perception.objectives.byol import BYOL, BYOLConfig
from perception.objectives.config import OBJECTIVE_NAMES, ObjectiveConfig
from perception.objectives.curl import CURL, CURLConfig
from perception.objectives.mae import MAE, MAEConfig

SubConfig = CURLConfig | BYOLConfig | MAEConfig | ATCConfig

_CONFIG_TYPES: dict[str, type[SubConfig]] = {
    "curl": CURLConfig, "byol": BYOLConfig, "mae": MAEConfig, "atc": ATCConfig,
}


def build_objective(name: str, encoder: nn.Module,
                    config: ObjectiveConfig | SubConfig | None = None,
                    augment: AugmentFn | None = None) -> Objective:
    """Build a self-supervised objective around ``encoder``.

    Args:
        name: One of :data:`OBJECTIVE_NAMES`.
        encoder: The online encoder to pre-train (``embed_dim`` attribute; uint8 or
            float frames in, ``(B, embed_dim)`` out); the objective's heads and EMA
            targets are placed on its device.
        config: An :class:`ObjectiveConfig` (its ``name`` must equal ``name``; its
            ``aux`` heads, if any, wrap the objective in :class:`WithAuxiliary`), the
            sub-config of that objective, or ``None`` for defaults.
        augment: Augmentation ``(frames_float_nchw, generator) -> frames`` for the
            contrastive objectives (e.g. ``perception.augment.Augmenter``); ``None``
            means no augmentation. MAE ignores it.

    Returns:
        The objective.

    Raises:
        ConfigError: (a ``ValueError``) for an unknown name, listing the valid ones,
            or a config that belongs to another objective.
    """
    if name not in OBJECTIVE_NAMES:
        raise ConfigError(f"unknown objective '{name}'; valid: {', '.join(OBJECTIVE_NAMES)}")
    aux: AuxHeadsConfig | None = None
    sub: SubConfig | None
    if isinstance(config, ObjectiveConfig):
        if config.name != name:
            raise ConfigError(f"objective '{name}' requested but the config selects "
                              f"'{config.name}'")
        sub = getattr(config, name)
        aux = config.aux
    else:
        sub = config
    if sub is not None and not isinstance(sub, _CONFIG_TYPES[name]):
        raise ConfigError(f"objective '{name}' needs a {_CONFIG_TYPES[name].__name__}, got "
                          f"{type(sub).__name__}")
    objective: Objective
    if isinstance(sub, CURLConfig) or (sub is None and name == "curl"):
        objective = CURL(encoder, sub, augment)
    elif isinstance(sub, BYOLConfig) or (sub is None and name == "byol"):
        objective = BYOL(encoder, sub, augment)
    elif isinstance(sub, MAEConfig) or (sub is None and name == "mae"):
        objective = MAE(encoder, sub)
    else:
        objective = ATC(encoder, sub, augment)
    if aux is not None and aux.heads:
        objective = WithAuxiliary(objective, build_aux_heads(encoder, aux))
    return objective


__all__ = [
    "ATC",
    "BYOL",
    "CURL",
    "DRIVING_HEADS",
    "MAE",
    "OBJECTIVE_NAMES",
    "ATCConfig",
    "AugmentFn",
    "AuxHeadsConfig",
    "AuxiliaryHeads",
    "BYOLConfig",
    "CURLConfig",
    "HeadConfig",
    "MAEConfig",
    "Objective",
    "ObjectiveConfig",
    "WithAuxiliary",
    "build_aux_heads",
    "build_objective",
    "ema_update_",
    "info_nce",
]
