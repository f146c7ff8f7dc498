"""The Target interface every backend implements, and the target registry.

A target says which nodes it supports (and why not), estimates their cost, compiles a graph
(partition) into a context binary (bytes) and loads such bytes into an Executable. Plugins add
targets through the entry-point group ``qir.targets`` or ``register_target``.
"""

from __future__ import annotations

import abc
from importlib.metadata import entry_points
from typing import Any, ClassVar

import attrs

from qir.errors import QirError, TargetError
from qir.ir.graph import Graph, Node


@attrs.frozen
class Support:
    """Whether a target runs a node, and if not, why (shown in partitioning reports)."""

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


@attrs.frozen
class CompileOptions:
    """Options every target accepts."""

    num_threads: int = attrs.field(default=1)

    @num_threads.validator
    def _check_threads(self, _attr, value):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            from qir.errors import OptionError

            raise OptionError(f"num_threads must be a positive integer, got {value!r}")


class Executable(abc.ABC):
    """A loaded, runnable graph: ``run`` maps input arrays (graph input order) to output arrays."""

    @abc.abstractmethod
    def run(self, inputs: list[Any]) -> list[Any]:
        ...


class Target(abc.ABC):
    """A backend: capabilities, cost model, compile to bytes, load from bytes."""

    name: ClassVar[str]

    @abc.abstractmethod
    def supports(self, node: Node) -> Support:
        ...

    def cost(self, node: Node) -> float:
        """Relative cost estimate of running ``node`` here (lower is better)."""
        return 1.0

    @abc.abstractmethod
    def compile(self, graph: Graph, options: CompileOptions) -> bytes:
        ...

    @abc.abstractmethod
    def load(self, blob: bytes, options: CompileOptions) -> Executable:
        ...


_TARGETS: dict[str, type[Target]] = {}
_entry_points_loaded = False


def register_target(cls: type[Target]) -> type[Target]:
    """Class decorator adding a target; two targets with one name are an error naming both."""
    if cls.name in _TARGETS and _TARGETS[cls.name] is not cls:
        old = _TARGETS[cls.name]
        raise QirError(f"target {cls.name!r} registered twice: {old.__module__}.{old.__name__} "
                       f"and {cls.__module__}.{cls.__name__}")
    _TARGETS[cls.name] = cls
    return cls


def _load_targets() -> None:
    global _entry_points_loaded
    import qir.targets.reference  # noqa: F401  (built-in)
    import qir.targets.kryo  # noqa: F401  (built-in; llvmlite is a core dependency)

    if not _entry_points_loaded:
        _entry_points_loaded = True
        for ep in entry_points(group="qir.targets"):
            register_target(ep.load())


def available_targets() -> list[str]:
    _load_targets()
    return sorted(_TARGETS)


def get_target(name: str) -> Target:
    """An instance of target ``name``; unknown names list the known ones."""
    _load_targets()
    try:
        return _TARGETS[name]()
    except KeyError:
        raise TargetError(f"unknown target {name!r}; available: {', '.join(sorted(_TARGETS))}") from None
