"""The kryo target: fp32 CPU kernels generated with llvmlite for the host's SIMD ISA.

Importing this package registers the target under the name ``kryo``.
"""

from qir.targets.kryo.target import KryoExecutable, KryoTarget

__all__ = ["KryoExecutable", "KryoTarget"]
