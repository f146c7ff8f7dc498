"""CompiledModel: a graph compiled for a target, run with named numpy inputs."""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

from qir.errors import InputError
from qir.ir.graph import Graph, Value
from qir.ir.shapes import check_input_shape
from qir.ir.types import Dim, DType, QuantParams, TensorType, Type
from qir.ir.qtensor import dequantize_array, quantize_array
from qir.targets.base import CompileOptions, Executable


@attrs.frozen
class TensorSpec:
    """Name, dtype, shape (symbolic dims as names) and quantization of a model input/output."""

    name: str
    type: Type

    @property
    def dtype(self) -> DType | None:
        return getattr(self.type, "dtype", None)

    @property
    def shape(self) -> tuple[Dim, ...] | None:
        return getattr(self.type, "shape", None)

    @property
    def quant(self) -> QuantParams | None:
        return getattr(self.type, "quant", None)

    @classmethod
    def of(cls, value: Value) -> "TensorSpec":
        return cls(value.name, value.type)


class CompiledModel:
    """A model ready to run: ``run({input name: array}) -> {output name: array}``."""

    def __init__(self, graph: Graph, target: str, blob: bytes, executable: Executable,
                 options: CompileOptions):
        self.graph = graph
        self.target = target
        self.blob = blob
        self.options = options
        self._executable = executable
        self.inputs = [TensorSpec.of(v) for v in graph.inputs]
        self.outputs = [TensorSpec.of(v) for v in graph.outputs]

    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        """Run on ``feeds``; returns the outputs in model order, as arrays the caller owns."""
        args = check_feeds(self.inputs, feeds)
        results = self._executable.run(args)
        return {spec.name: _as_output(spec, r) for spec, r in zip(self.outputs, results)}

    @property
    def executable(self) -> Executable:
        """The target's loaded executable (the profiler calls its optional ``run_profiled``)."""
        return self._executable

    def save(self, path: Any, *, created_by: str | None = None, library_arch: str | None = None) -> Any:
        """Write the model as an artifact folder (qir.runtime.artifacts); ``qir.load`` reads it.
        ``library_arch`` (target kryo: ``"x86_64"`` or ``"aarch64"``) adds ``model.so``, a
        standalone library with the C ABI of ``model_abi.h`` (also written)."""
        from qir.runtime.artifacts import save_artifact

        return save_artifact(self, path, created_by=created_by, library_arch=library_arch)

    def __repr__(self) -> str:
        return f"CompiledModel(target={self.target!r}, inputs={[s.name for s in self.inputs]}, " \
               f"outputs={[s.name for s in self.outputs]})"


def _as_output(spec: TensorSpec, result: Any) -> Any:
    """A result the caller owns; quantized outputs come back dequantized to float32."""
    if spec.quant is not None and isinstance(result, np.ndarray):
        return dequantize_array(result, spec.quant)
    return _owned(result)


def _owned(result: Any) -> Any:
    if isinstance(result, list):
        return [_owned(r) for r in result]
    if result is None:
        return None
    return np.array(result, copy=True)


def check_feeds(specs: list[TensorSpec], feeds: dict[str, Any]) -> list[Any]:
    """Feeds in input order, after checking names, dtypes and shapes (binding symbolic dims)."""
    if not isinstance(feeds, dict):
        raise InputError(f"inputs must be a dict {{name: array}}, got {type(feeds).__name__}")
    names = [s.name for s in specs]
    missing = [n for n in names if n not in feeds]
    unknown = [n for n in feeds if n not in names]
    if missing or unknown:
        raise InputError(f"inputs do not match the model: missing {missing}, unknown {unknown}; "
                         f"the model takes {names}")
    bound: dict[str, int] = {}
    return [_check_one(spec, feeds[spec.name], bound) for spec in specs]


def _check_one(spec: TensorSpec, value: Any, bound: dict[str, int]) -> Any:
    t = spec.type
    if not isinstance(t, TensorType):
        return value  # sequences and optionals pass as lists / None
    array = np.asarray(value)
    if t.quant is not None and array.dtype.kind == "f":
        # Quantized models take float (as QNN's net-run does): quantize with the input's params.
        array = quantize_array(array, t.quant)
    if t.dtype == DType.STRING and array.dtype.kind in "OUS":
        array = array.astype(object)
    if array.dtype != t.dtype.numpy:
        raise InputError(f"input {spec.name!r} must be {t.dtype.value} ({t.dtype.numpy}), "
                         f"got {array.dtype}", hint=f"convert it with .astype({t.dtype.numpy.name!r})")
    check_input_shape(spec.name, t.shape, array.shape, bound)
    return array
