"""Imports every built-in pass module so that their passes register."""

from qir.passes import (  # noqa: F401  (each module registers its passes)
    cleanup, fold, fusion, layout, memory_report, quantize, recognize, shapes,
)
