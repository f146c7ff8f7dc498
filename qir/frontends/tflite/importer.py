"""TFLite subgraph → qir Graph: tensors to Values, operators through the converter registry.

Layout: TFLite is NHWC; qir's conv and pool ops are NCHW (ONNX semantics). Converters of
conv/pool ops read their input through ``nchw_input`` and write through ``set_nhwc_output``,
which put transposes around the op (the layout pass cancels back-to-back pairs); conv weights
(OHWI, depthwise 1HWO) are transposed at import.

Quantization (QDQ form): a quantized TFLite tensor becomes an integer Value whose TensorType
carries its QuantParams. A converter computes in float: ``real(i)`` dequantizes a quantized
input (``quant.dequantize_linear``), and ``set_output`` applies the fused activation in float
and quantizes to the output tensor's integer type (``quant.quantize_linear``). Transposes that
change layout act on the integer values (quantization is per tensor for activations), so a
DQ → op → Q chain stays contiguous for the pass that folds it into integer ops.
"""

from __future__ import annotations

import collections
import importlib
import re
from typing import Any, Callable

import attrs
import numpy as np

from qir.errors import ModelLoadError, QirError, UnsupportedOpError
from qir.frontends.tflite.reader import TflModel, TflOperator, TflTensor
from qir.ir.graph import Graph, Value
from qir.ir.types import DType, QuantParams, TensorType

#: Builtin operator name → converter(ctx). Filled by qir.frontends.tflite.ops.
CONVERTERS: dict[str, Callable[["OpContext"], None]] = {}

#: Operators that run other subgraphs; qir imports subgraph 0 only.
_CONTROL_FLOW = frozenset({"WHILE", "IF", "CALL_ONCE", "CALL"})

TO_NCHW = (0, 3, 1, 2)
TO_NHWC = (0, 2, 3, 1)


def converter(*names: str):
    """Register a converter for one or more builtin operators (``CONV_2D``...)."""
    def register(fn):
        for name in names:
            if name in CONVERTERS:
                raise ValueError(f"TFLite operator {name} has two converters")
            CONVERTERS[name] = fn
        return fn
    return register


def short_name(tensor_name: str) -> str:
    """The first of the ';'-joined op names the converter gives a fused tensor."""
    return tensor_name.split(";", 1)[0] or tensor_name


class Importer:
    """Builds the Graph of subgraph 0 of a read TFLite model."""

    def __init__(self, model: TflModel):
        self.model = model
        self.sub = model.main
        self.where = model.where
        self.graph = Graph("main")
        self.values: dict[int, Value] = {}  # tensor index → its (raw, maybe integer) Value
        self.reals: dict[int, Value] = {}   # tensor index → its float (dequantized) Value
        self.nchw: dict[int, Value] = {}    # tensor index → its float NCHW Value
        self.weights: dict[tuple[int, tuple[int, ...]], Value] = {}
        self.quant_consts: dict[tuple[QuantParams, DType], tuple[Value, Value]] = {}
        self.io_names = {self.sub.tensors[i].name for i in self.sub.inputs + self.sub.outputs}
        #: Short names of operator outputs, held for them so that constants (which TFLite
        #: often names after the same fused ops) and helper nodes never take them first.
        self.reserved = {short_name(self.sub.tensors[i].name) for op in self.sub.operators
                         for i in op.outputs} - self.io_names

    def run(self) -> Graph:
        importlib.import_module("qir.frontends.tflite.ops")  # registers the converters
        self.check_supported()
        self.graph._names.update(self.io_names | self.reserved)  # held for their tensors
        for index in self.sub.inputs:
            self.add_input(self.sub.tensors[index])
        for op in self.sub.operators:
            self.convert(op)
        self.set_outputs()
        self.graph.metadata["tflite.version"] = str(self.model.version)
        if self.model.description:
            self.graph.metadata["tflite.description"] = self.model.description
        return self.graph

    # -- support check ------------------------------------------------------------------------
    def check_supported(self) -> None:
        missing: dict[str, list[str]] = collections.OrderedDict()
        for op in self.sub.operators:
            if op.op not in CONVERTERS:
                first = self.sub.tensors[op.outputs[0]].name if op.outputs else f"operator {op.index}"
                missing.setdefault(op.op, []).append(first)
        if missing:
            lines = [f"  {_describe(op)} ×{len(names)} (outputs e.g. {', '.join(map(repr, names[:3]))})"
                     for op, names in missing.items()]
            hint = ("custom ops need their own implementation; for builtin ops please file an issue "
                    "with this list, or convert the model with only the supported builtins")
            if set(missing) & _CONTROL_FLOW:
                hint += ("; control flow (WHILE/IF/CALL_ONCE) runs the model's other subgraphs, which "
                         "qir does not import: unroll loops or fix their trip counts before converting")
            raise UnsupportedOpError(
                f"{self.where}: {len(missing)} unsupported TFLite operator type(s):\n" + "\n".join(lines),
                hint=hint)
        for tensor in self.sub.tensors:
            if tensor.is_variable:
                raise UnsupportedOpError(f"{self.where}: tensor {tensor.name!r} is a variable (stateful "
                                         f"model); qir imports stateless models only")

    # -- tensors ------------------------------------------------------------------------------
    def add_input(self, tensor: TflTensor) -> None:
        shape = tuple(_dim(tensor, i) for i in range(len(tensor.shape)))
        self.graph._names.discard(tensor.name)
        value = self.graph.add_input(tensor.name, TensorType(tensor.dtype, shape, tensor.quant))
        self.values[tensor.index] = value

    def value(self, index: int, user: str) -> Value:
        if index in self.values:
            return self.values[index]
        tensor = self.sub.tensors[index]
        if tensor.data is None:
            raise ModelLoadError(f"{self.where}: operator {user} reads tensor {tensor.name!r}, which no "
                                 f"earlier operator produces and which has no data",
                                 hint="the operators are not in execution order or the file is corrupt")
        type = TensorType(tensor.dtype, tensor.data.shape, tensor.quant)
        value = self.graph.add_constant(tensor.data, short_name(tensor.name), type)
        self.values[index] = value
        return value

    def convert(self, op: TflOperator) -> None:
        ctx = OpContext(self, op)
        try:
            CONVERTERS[op.op](ctx)
        except QirError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"{self.where}: operator {ctx.name} ({op.op}) cannot be converted: "
                                 f"{type(exc).__name__}: {exc}") from exc
        for index in op.outputs:
            if index not in self.values:
                raise ModelLoadError(f"{self.where}: the converter of {op.op} left output "
                                     f"{self.sub.tensors[index].name!r} undefined")

    def set_outputs(self) -> None:
        seen: set[int] = set()
        for index in self.sub.outputs:
            tensor = self.sub.tensors[index]
            value = self.value(index, "graph output")
            # Outputs are distinct node outputs named as in the model: pass graph inputs,
            # constants and repeats through an identity.
            if value.producer is None or id(value) in seen or value.name != tensor.name:
                if value.producer is not None and id(value) not in seen:
                    self.graph._names.discard(tensor.name)
                    self.graph.rename(value, tensor.name)
                else:
                    self.graph._names.discard(tensor.name)
                    node = self.graph.add_node("tensor.identity", [value], name=f"{short_name(tensor.name)}_identity",
                                               output_names=[tensor.name], provenance=(tensor.name,))
                    node.output.type = attrs.evolve(node.output.type, quant=tensor.quant)
                    value = node.output
            seen.add(id(value))
            self.graph.outputs.append(value)


def _describe(op: str) -> str:
    return f"custom op {op[len('CUSTOM:'):]!r}" if op.startswith("CUSTOM:") else op


def _dim(tensor: TflTensor, i: int):
    """A static dim, or a symbol where the shape signature says -1 (batch: ``N``)."""
    if tensor.signature is None or tensor.signature[i] >= 0:
        return tensor.shape[i]
    if i == 0:
        return "N"
    return re.sub(r"\W", "_", short_name(tensor.name)).strip("_") + f"_d{i}"


class OpContext:
    """What a converter sees of one TFLite operator, and how it adds qir nodes."""

    def __init__(self, importer: Importer, op: TflOperator):
        self.importer = importer
        self.op = op
        self.graph = importer.graph
        self.options = op.options
        first = importer.sub.tensors[op.outputs[0]].name if op.outputs else f"op{op.index}"
        self.name = short_name(first)
        #: Provenance: the TF op names fused into this operator's outputs.
        self.provenance = tuple(dict.fromkeys(
            part for i in op.outputs for part in importer.sub.tensors[i].name.split(";") if part))

    # -- reading inputs -----------------------------------------------------------------------
    @property
    def num_inputs(self) -> int:
        return len(self.op.inputs)

    def has(self, i: int) -> bool:
        return i < len(self.op.inputs) and self.op.inputs[i] >= 0

    def tensor(self, i: int) -> TflTensor:
        return self.importer.sub.tensors[self.op.inputs[i]]

    def out_tensor(self, j: int = 0) -> TflTensor:
        return self.importer.sub.tensors[self.op.outputs[j]]

    def raw(self, i: int) -> Value:
        """Input ``i`` as stored (integer for quantized tensors)."""
        return self.importer.value(self.op.inputs[i], self.name)

    def real(self, i: int) -> Value:
        """Input ``i`` in float: quantized tensors go through a DequantizeLinear (one per tensor)."""
        index = self.op.inputs[i]
        cache = self.importer.reals
        if index not in cache:
            tensor = self.tensor(i)
            value = self.raw(i)
            cache[index] = self.dequantize(value, tensor.quant, short_name(tensor.name)) \
                if tensor.quant is not None else value
        return cache[index]

    def const(self, i: int, what: str) -> np.ndarray:
        """The data of input ``i``, which must be a constant (axes, shapes, permutations)."""
        tensor = self.tensor(i)
        if tensor.data is None:
            raise self.fail(f"its {what} (tensor {tensor.name!r}) must be a constant, but it is computed "
                            f"at run time")
        return tensor.data

    def nchw_input(self, i: int) -> Value:
        """Input ``i`` (NHWC) transposed to NCHW, in float; quantized tensors are transposed
        before the DequantizeLinear so that DQ → op → Q stays one chain."""
        index = self.op.inputs[i]
        cache = self.importer.nchw
        if index not in cache:
            tensor = self.tensor(i)
            if tensor.quant is None:
                cache[index] = self.transpose(self.real(i), TO_NCHW)
            else:
                moved = self.transpose(self.raw(i), TO_NCHW)
                moved.type = attrs.evolve(moved.type, quant=tensor.quant)
                cache[index] = self.dequantize(moved, tensor.quant, short_name(tensor.name) + "_nchw")
        return cache[index]

    def weight(self, i: int, perm: tuple[int, ...]) -> Value:
        """Input ``i`` transposed by ``perm`` (at import for constants, the quantized axis
        mapped through it), in float."""
        key = (self.op.inputs[i], perm)
        cache = self.importer.weights
        if key not in cache:
            tensor = self.tensor(i)
            if tensor.data is None:
                value = self.transpose(self.real(i), perm)
            else:
                quant = tensor.quant
                if quant is not None and quant.axis is not None:
                    quant = attrs.evolve(quant, axis=perm.index(quant.axis))
                data = np.ascontiguousarray(np.transpose(tensor.data, perm))
                value = self.graph.add_constant(data, short_name(tensor.name),
                                                TensorType(tensor.dtype, data.shape, quant))
                if quant is not None:
                    value = self.dequantize(value, quant, value.name)
            cache[key] = value
        return cache[key]

    def bias(self, i: int, x: int, w: int) -> Value | None:
        """The bias input in float; an int32 bias without its own scale gets s_x · s_w."""
        if not self.has(i):
            return None
        tensor = self.tensor(i)
        if tensor.quant is None and tensor.dtype.is_int:
            sx, sw = self.tensor(x).quant, self.tensor(w).quant
            if sx is None or sw is None:
                raise self.fail(f"integer bias {tensor.name!r} has no scale and its input/weights are not quantized")
            scale = np.asarray(sx.scale) * np.asarray(sw.scale)
            quant = QuantParams(scale, np.zeros(scale.size, np.int64), bitwidth=tensor.dtype.numpy.itemsize * 8,
                                axis=0 if scale.size > 1 else None)
            raw = self.raw(i)
            raw.type = attrs.evolve(raw.type, quant=quant)
            return self.dequantize(raw, quant, short_name(tensor.name))
        return self.real(i)

    # -- emitting -----------------------------------------------------------------------------
    def emit(self, op: str, inputs, attrs_: dict[str, Any] | None = None, *, suffix: str | None = None) -> Value:
        """Add a one-output qir node (provenance: this operator) and return its output."""
        base = f"{self.name}_{suffix or op.rsplit('.', 1)[-1]}"
        node = self.graph.add_node(op, list(inputs), attrs_ or {}, name=base, num_outputs=1,
                                   provenance=self.provenance)
        return node.output

    def const_value(self, array, dtype=None, name: str = "const") -> Value:
        array = np.asarray(array, dtype=dtype)
        return self.graph.add_constant(array, f"{self.name}_{name}")

    def ints(self, values, name: str = "const") -> Value:
        return self.const_value(np.asarray(values, dtype=np.int64).reshape(-1), name=name)

    def transpose(self, value: Value, perm) -> Value:
        return self.emit("tensor.transpose", [value], {"perm": list(perm)})

    def dequantize(self, value: Value, quant: QuantParams, name: str) -> Value:
        scale, zp = self.quant_consts(quant, value.type.dtype, name)
        node = self.graph.add_node("quant.dequantize_linear", [value, scale, zp],
                                   {"axis": quant.axis if quant.axis is not None else 1, "block_size": 0,
                                    "output_dtype": DType.FLOAT32},
                                   name=f"{name}_dq", provenance=self.provenance)
        return node.output

    def quantize(self, value: Value, tensor: TflTensor) -> Value:
        quant = tensor.quant
        scale, zp = self.quant_consts(quant, tensor.dtype, short_name(tensor.name))
        node = self.graph.add_node("quant.quantize_linear", [value, scale, zp],
                                   {"axis": quant.axis if quant.axis is not None else 1, "saturate": 1,
                                    "block_size": 0, "output_dtype": tensor.dtype, "precision": None},
                                   name=f"{short_name(tensor.name)}_q",
                                   provenance=self.provenance)
        out = node.output
        out.type = attrs.evolve(out.type, quant=quant)
        return out

    def quant_consts(self, quant: QuantParams, dtype: DType, name: str) -> tuple[Value, Value]:
        """Scale and zero-point constants, shared by every Q and DQ of the same quantization."""
        key = (quant, dtype)
        if key not in self.importer.quant_consts:
            self.importer.quant_consts[key] = self._quant_consts(quant, dtype, name)
        return self.importer.quant_consts[key]

    def _quant_consts(self, quant: QuantParams, dtype: DType, name: str) -> tuple[Value, Value]:
        per_axis = quant.axis is not None
        scale = np.asarray(quant.scale, dtype=np.float32)
        zp = np.asarray(quant.zero_point).astype(dtype.numpy)
        if not per_axis:
            scale, zp = scale.reshape(()), zp.reshape(())
        return (self.graph.add_constant(scale, f"{name}_scale"),
                self.graph.add_constant(zp, f"{name}_zero_point"))

    def activation(self, value: Value, code: int | None = None) -> Value:
        """Apply the fused activation (options ``FusedActivationFunction`` unless given), in float."""
        code = self.options.get("FusedActivationFunction", 0) if code is None else code
        if code == 0:
            return value
        if code not in _ACTIVATIONS:
            raise self.fail(f"fused activation {code} (SIGN_BIT?) is not supported")
        return _ACTIVATIONS[code](self, value)

    def clip(self, value: Value, low: float | None, high: float | None) -> Value:
        lo = self.const_value(np.float32(low), name="min") if low is not None else None
        hi = self.const_value(np.float32(high), name="max") if high is not None else None
        return self.emit("elementwise.clip", [value, lo, hi])

    def set_output(self, j: int, value: Value, *, fused: bool = True) -> Value:
        """Give the float ``value`` to output ``j``: fused activation, then quantize when the
        output tensor is quantized (cast when it has another type)."""
        tensor = self.out_tensor(j)
        if fused:
            value = self.activation(value)
        value = self.to_tensor_type(value, tensor)
        return self.bind(j, value)

    def set_nhwc_output(self, j: int, value: Value) -> Value:
        """Like ``set_output`` for an NCHW float result: activation, quantize, then back to NHWC."""
        tensor = self.out_tensor(j)
        value = self.to_tensor_type(self.activation(value), tensor)
        moved = self.transpose(value, TO_NHWC)
        moved.type = attrs.evolve(moved.type, quant=tensor.quant)
        return self.bind(j, moved)

    def to_tensor_type(self, value: Value, tensor: TflTensor) -> Value:
        if tensor.quant is not None:
            return self.quantize(value, tensor)
        if value.type is not None and value.type.dtype != tensor.dtype:
            return self.emit("elementwise.cast", [value], {"to": tensor.dtype, "saturate": 1, "round_mode": "up"})
        return value

    def bind(self, j: int, value: Value) -> Value:
        """Make ``value`` the Value of output tensor ``j``, named after it."""
        tensor = self.out_tensor(j)
        index = self.op.outputs[j]
        if index in self.importer.values:
            raise ModelLoadError(f"{self.importer.where}: tensor {tensor.name!r} is written by two operators",
                                 hint="the file is corrupt")
        if value.producer is not None and value.graph is self.graph and value not in self.importer.values.values() \
                and tensor.name not in self.importer.io_names:
            name = short_name(tensor.name)
            if name in self.importer.reserved:
                self.importer.reserved.discard(name)
                self.graph._names.discard(name)
            self.graph.rename(value, name)
        if value.producer is not None and isinstance(value.type, TensorType):
            value.type = _refine(value.type, tensor)
        self.importer.values[index] = value
        return value

    def fail(self, message: str) -> QirError:
        return UnsupportedOpError(f"{self.importer.where}: operator {self.name} ({self.op.op}): {message}")


def _refine(type: TensorType, tensor: TflTensor) -> TensorType:
    """``type`` with the dims qir's inference left unknown taken from TFLite's static shape
    (run-time shape arithmetic, e.g. Keras' SHAPE → PACK → RESHAPE, hides them from qir)."""
    signature = tensor.signature if tensor.signature is not None else tensor.shape
    if type.shape is not None and len(type.shape) != len(signature):
        return type
    current = type.shape if type.shape is not None else ("?",) * len(signature)
    dims = tuple(s if isinstance(d, str) and s >= 0 else d for d, s in zip(current, signature))
    return type.with_shape(dims)


def _relu(ctx: OpContext, v: Value) -> Value:
    return ctx.emit("nn.relu", [v])


_ACTIVATIONS: dict[int, Callable[[OpContext, Value], Value]] = {
    1: _relu,                                            # RELU
    2: lambda ctx, v: ctx.clip(v, -1.0, 1.0),            # RELU_N1_TO_1
    3: lambda ctx, v: ctx.clip(v, 0.0, 6.0),             # RELU6
    4: lambda ctx, v: ctx.emit("nn.tanh", [v]),          # TANH
}
