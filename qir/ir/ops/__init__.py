"""The built-in op families; importing this package registers every op.

One file per family: elementwise (math, comparison, logic, cast), nn (activations,
convolution, pooling, normalization, recurrent), tensor (shape and data movement), reduce,
linalg (matmul, gemm, einsum...), control (If/Loop/Scan, sequences, optionals), quant.
"""

import importlib

FAMILIES = ("elementwise", "nn", "tensor", "reduce", "linalg", "control", "quant", "loss", "training", "misc", "fused")

for _family in FAMILIES:
    try:
        importlib.import_module(f"{__name__}.{_family}")
    except ModuleNotFoundError as _exc:  # a family not written yet
        if _exc.name != f"{__name__}.{_family}":
            raise
