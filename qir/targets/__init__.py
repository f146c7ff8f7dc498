"""Targets: the Target interface, its registry, and the built-in targets."""

from qir.targets.base import Executable, Support, Target, available_targets, get_target, register_target

__all__ = ["Executable", "Support", "Target", "available_targets", "get_target", "register_target"]
