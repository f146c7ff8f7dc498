"""Imports every built-in pass module so that their passes register."""

import importlib

for _module in ("cleanup", "fold", "shapes", "fusion", "recognize", "layout", "memory_report"):
    try:
        importlib.import_module(f"qir.passes.{_module}")
    except ModuleNotFoundError as _exc:  # a pass family not written yet
        if _exc.name != f"qir.passes.{_module}":
            raise
