"""The standard pipelines of ``-O0`` .. ``-O3``, by pass name.

- ``-O0``: nothing (the graph as imported).
- ``-O1``: cleanup: shapes, canonicalization, no-op elimination, constant folding, BatchNorm
  folded into the Conv/Gemm/MatMul before it (weights math only: the graph stays standard
  ONNX, as at onnxruntime's basic level), CSE, DCE.
- ``-O2``: + transposes composed and cancelled (``cancel-transposes``: NHWC models from
  TensorFlow/TFLite lose the transposes between their ops), recognition of LayerNorm, GELU and scaled-dot-product attention (standard ops again,
  each with a decomposition back), Pad folded into Conv/Pool, MatMul+Add → Gemm; then cleanup.
- ``-O3``: + epilogue fusion (bias, residual add, activation into one ``fused.conv``, a qir op
  that the ONNX export writes back as standard ops); then cleanup.

Each pass sits at the level its own ``opt_level`` declares. Not here: ``fuse-conv-activation``
(fuse-epilogue does all it does and more), the ``decompose-*`` passes (lowering for targets that
lack an op), ``memory-report`` (a report), and ``convert-layout``: the layout that pays (NHWC,
NCHWc) depends on the target, which asks for it in its own pipeline.

The lists name passes that live in other modules of qir.passes; a name not registered (yet) is
skipped, and ``missing_passes`` says which, so a test can hold the final pipeline complete.
"""

from __future__ import annotations

from qir.errors import OptionError
from qir.passes.registry import all_passes

#: Cleanup after rewrites: they leave dead nodes and constants, duplicates and folding chances.
#: dce runs before eliminate-noops too: a no-op such as an inference Dropout is only removable
#: once the dead readers of its other outputs (e.g. its mask) are gone.
CLEANUP = ("canonicalize", "dce", "eliminate-noops", "fold-constants", "cse", "dce")

#: The full pipeline of each level, in order.
PIPELINES: dict[int, tuple[str, ...]] = {
    0: (),
    1: ("infer-shapes", "canonicalize", "dce", "eliminate-noops", "fold-constants", "fold-batchnorm",
        "cse", "dce"),
    2: ("infer-shapes", "canonicalize", "dce", "eliminate-noops", "fold-constants",
        "cancel-transposes", "recognize-layernorm", "recognize-gelu", "recognize-attention",
        "fold-pad", "matmul-add-to-gemm", "fold-batchnorm") + CLEANUP,
    3: ("infer-shapes", "canonicalize", "dce", "eliminate-noops", "fold-constants",
        "cancel-transposes", "recognize-layernorm", "recognize-gelu", "recognize-attention",
        "fold-pad", "matmul-add-to-gemm", "fold-batchnorm", "fuse-epilogue") + CLEANUP,
}
LEVELS = PIPELINES  # the levels there are

MAX_LEVEL = max(PIPELINES)


def expected_pipeline(opt_level: int) -> list[str]:
    """The full pipeline of ``opt_level`` by name, whether or not every pass is registered."""
    if opt_level not in PIPELINES:
        raise OptionError(f"unknown opt level {opt_level}", hint=f"use 0 to {MAX_LEVEL} (-O0 .. -O{MAX_LEVEL})")
    return list(PIPELINES[opt_level])


def standard_pipeline(opt_level: int) -> list[str]:
    """The pipeline of ``opt_level`` (0-3) as pass names, leaving out names not registered."""
    registered = all_passes()
    return [name for name in expected_pipeline(opt_level) if name in registered]


def missing_passes(opt_level: int = MAX_LEVEL) -> list[str]:
    """Names in the pipelines up to ``opt_level`` that no registered pass has."""
    registered = all_passes()
    return sorted({name for name in expected_pipeline(opt_level) if name not in registered})
