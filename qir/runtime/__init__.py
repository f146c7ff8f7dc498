"""The runtime: compiled models, their I/O specs and input checking."""

from qir.runtime.model import CompiledModel, TensorSpec

__all__ = ["CompiledModel", "TensorSpec"]
