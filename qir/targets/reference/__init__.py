"""The reference target: qir's numpy interpreter behind the Target interface."""

from qir.ir.interpreter import Interpreter
from qir.targets.reference.target import ReferenceTarget

__all__ = ["Interpreter", "ReferenceTarget"]
