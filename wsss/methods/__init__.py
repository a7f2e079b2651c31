"""The method registry: ``python train/run.py NAME`` looks the method up here.

Adding a method touches one new module and the ``METHODS`` table below.
"""

from __future__ import annotations

from typing import Any

from wsss.config import from_dict
from wsss.methods.base import Method, StepInfo
from wsss.methods.cam import CamBaseline
from wsss.methods.cpn import CPN
from wsss.methods.ecs import ECS
from wsss.methods.eps import EPS
from wsss.methods.fbr import FBR
from wsss.methods.ktse import KTSE

METHODS: dict[str, type[Method]] = {
    CamBaseline.name: CamBaseline,
    CPN.name: CPN,
    ECS.name: ECS,
    EPS.name: EPS,
    FBR.name: FBR,
    KTSE.name: KTSE,
}


class UnknownMethodError(KeyError):
    def __str__(self) -> str:
        return self.args[0]


def get_method(name: str) -> type[Method]:
    try:
        return METHODS[name]
    except KeyError:
        raise UnknownMethodError(
            f"unknown method {name!r}; choose one of: {', '.join(METHODS)}"
        ) from None


def method_config(name: str, section: dict | None) -> Any:
    """Method ``name``'s own config dataclass from a saved ``method`` section (config.json or a
    checkpoint); missing fields take their defaults."""
    return from_dict(get_method(name).Config, section or {})


__all__ = ["METHODS", "Method", "StepInfo", "get_method", "method_config", "UnknownMethodError"]
