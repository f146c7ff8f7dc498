"""ONNX → qir converters, one module per qir op family."""

import importlib

for _family in ("core", "elementwise", "nn", "tensor", "reduce", "linalg", "control", "quant", "loss", "training", "misc"):
    try:
        importlib.import_module(f"{__name__}.{_family}")
    except ModuleNotFoundError as _exc:  # a family not written yet
        if _exc.name != f"{__name__}.{_family}":
            raise
