"""Reading a ``.tflite`` flatbuffer into plain Python data (attrs classes, numpy arrays).

The flatbuffer bindings of the ``tflite`` package read lazily and fail with IndexError or
struct.error deep inside on truncated or corrupt bytes; everything is read here, up front,
inside one guard, so that a bad file becomes one ModelLoadError and the importer works on
checked data only.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from qir.errors import ModelLoadError, QirError
from qir.ir.types import DType, QuantParams

#: TFLite's TensorType enum (schema.fbs) → qir dtype. Missing ones (RESOURCE, VARIANT, INT4
#: packed two per byte) are refused with the tensor's name.
_DTYPES = {0: DType.FLOAT32, 1: DType.FLOAT16, 2: DType.INT32, 3: DType.UINT8, 4: DType.INT64,
           5: DType.STRING, 6: DType.BOOL, 7: DType.INT16, 8: DType.COMPLEX64, 9: DType.INT8,
           10: DType.FLOAT64, 11: DType.COMPLEX128, 12: DType.UINT64, 15: DType.UINT32,
           16: DType.UINT16, 18: DType.BFLOAT16}
_TYPE_NAMES = {13: "RESOURCE", 14: "VARIANT", 17: "INT4"}
_CUSTOM = 32  # BuiltinOperator.CUSTOM


@attrs.frozen
class TflTensor:
    """One tensor of a subgraph: static shape, signature (-1 = dynamic), data of constants."""

    index: int
    name: str
    dtype: DType
    shape: tuple[int, ...]
    signature: tuple[int, ...] | None
    data: np.ndarray | None
    quant: QuantParams | None
    is_variable: bool = False


@attrs.frozen
class TflOperator:
    """One operator: ``op`` is the builtin name (``CONV_2D``) or ``CUSTOM:<code>``."""

    index: int
    op: str
    inputs: tuple[int, ...]  # -1: an omitted optional input
    outputs: tuple[int, ...]
    options: dict[str, Any]
    version: int = 1

    @property
    def is_custom(self) -> bool:
        return self.op.startswith("CUSTOM:")


@attrs.frozen
class TflSubgraph:
    name: str
    tensors: tuple[TflTensor, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    operators: tuple[TflOperator, ...]


@attrs.frozen
class TflModel:
    """Subgraph 0 read in full; the others are only counted (control flow references them)."""

    where: str
    version: int
    description: str
    main: TflSubgraph
    num_subgraphs: int


def read_tflite(model: Any) -> TflModel:
    """Read a ``.tflite`` file path or its bytes; any malformation raises ModelLoadError."""
    tflite = _import_tflite()
    if isinstance(model, (bytes, bytearray, memoryview)):
        data, where = bytes(model), "<tflite bytes>"
    elif isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_file():
            raise ModelLoadError(f"{path}: no such TFLite model file")
        data, where = path.read_bytes(), str(path)
    else:
        raise ModelLoadError(f"load_tflite expects a .tflite path or its bytes, got {type(model).__name__}")
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ModelLoadError(f"{where}: not a TFLite model (no 'TFL3' file identifier)",
                             hint="the file is truncated or not a .tflite flatbuffer")
    try:
        return _Reader(tflite, data, where).model()
    except QirError:
        raise
    except Exception as exc:  # the bindings fail with IndexError, struct.error, ValueError...
        raise ModelLoadError(f"{where}: not a valid TFLite model ({type(exc).__name__}: {exc})",
                             hint="the file is truncated or corrupt; convert the model again") from None


def _import_tflite():
    try:
        import tflite
    except ImportError:
        raise QirError("reading .tflite files needs the 'tflite' flatbuffer bindings",
                       hint="pip install qir[tf]  (or: pip install tflite)") from None
    return tflite


class _Reader:
    def __init__(self, tflite, data: bytes, where: str):
        self.tfl = tflite
        self.data = data
        self.where = where
        self.op_names = {v: k for k, v in vars(tflite.BuiltinOperator).items()
                         if not k.startswith("_") and isinstance(v, int)}
        self.option_classes = {v: k for k, v in vars(tflite.BuiltinOptions).items()
                               if not k.startswith("_") and isinstance(v, int)}

    def count(self, n: int, what: str) -> int:
        """A vector length, refused when the file cannot hold that many entries (corruption
        would otherwise make the reader loop over billions of entries)."""
        if n < 0 or n > len(self.data) // 4 + 1:
            raise ModelLoadError(f"{self.where}: {what} claims {n} entries in a {len(self.data)}-byte file",
                                 hint="the file is corrupt")
        return n

    def model(self) -> TflModel:
        m = self.tfl.Model.GetRootAsModel(self.data, 0)
        version = m.Version()
        if version != 3:
            raise ModelLoadError(f"{self.where}: TFLite schema version {version}; only version 3 is supported")
        n_sub = self.count(m.SubgraphsLength(), "the subgraph list")
        if n_sub == 0:
            raise ModelLoadError(f"{self.where}: the model has no subgraph")
        codes = [self.opcode(m.OperatorCodes(i))
                 for i in range(self.count(m.OperatorCodesLength(), "the operator code list"))]
        buffers = [m.Buffers(i) for i in range(self.count(m.BuffersLength(), "the buffer list"))]
        description = (m.Description() or b"").decode("utf-8", "replace")
        return TflModel(self.where, version, description, self.subgraph(m.Subgraphs(0), codes, buffers), n_sub)

    def opcode(self, code) -> tuple[str, int]:
        # Codes above 127 live only in builtin_code; older files only fill the deprecated byte.
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == _CUSTOM:
            return "CUSTOM:" + (code.CustomCode() or b"?").decode("utf-8", "replace"), code.Version()
        return self.op_names.get(builtin, f"BUILTIN_{builtin}"), code.Version()

    def subgraph(self, sg, codes, buffers) -> TflSubgraph:
        tensors = tuple(self.tensor(i, sg.Tensors(i), buffers)
                        for i in range(self.count(sg.TensorsLength(), "the tensor list")))
        operators = []
        for i in range(self.count(sg.OperatorsLength(), "the operator list")):
            operators.append(self.operator(i, sg.Operators(i), codes, len(tensors)))
        name = (sg.Name() or b"").decode("utf-8", "replace")
        inputs, outputs = self.indices(sg.InputsAsNumpy(), len(tensors)), self.indices(sg.OutputsAsNumpy(), len(tensors))
        return TflSubgraph(name, tensors, inputs, outputs, tuple(operators))

    def indices(self, array, n_tensors: int, optional: bool = False) -> tuple[int, ...]:
        values = tuple(int(i) for i in (array if isinstance(array, np.ndarray) else ()))
        for i in values:
            if not (0 <= i < n_tensors or (optional and i == -1)):
                raise ModelLoadError(f"{self.where}: tensor index {i} is out of range (the subgraph has "
                                     f"{n_tensors} tensors)", hint="the file is corrupt")
        return values

    def tensor(self, index: int, t, buffers) -> TflTensor:
        name = (t.Name() or b"").decode("utf-8", "replace") or f"tensor_{index}"
        code = t.Type()
        if code not in _DTYPES:
            raise QirError(f"{self.where}: tensor {name!r} has type {_TYPE_NAMES.get(code, code)}, "
                           f"which qir does not support")
        if t.Sparsity() is not None:
            raise QirError(f"{self.where}: tensor {name!r} is sparse; qir reads dense tensors only",
                           hint="convert the model without sparsity")
        dtype = _DTYPES[code]
        shape = tuple(int(d) for d in (t.ShapeAsNumpy() if t.ShapeLength() else ()))
        signature = tuple(int(d) for d in t.ShapeSignatureAsNumpy()) if t.ShapeSignatureLength() else None
        if any(d < 0 for d in shape) or (signature is not None and len(signature) != len(shape)):
            raise ModelLoadError(f"{self.where}: tensor {name!r} has a bad shape {shape} / signature {signature}")
        data = self.buffer(t.Buffer(), buffers, name, dtype, shape)
        return TflTensor(index, name, dtype, shape, signature, data, self.quant(t.Quantization(), dtype, name),
                         bool(t.IsVariable()))

    def buffer(self, index: int, buffers, name: str, dtype: DType, shape) -> np.ndarray | None:
        if index == 0:  # buffer 0 is the empty sentinel of every non-constant tensor
            return None
        if not 0 <= index < len(buffers):
            raise ModelLoadError(f"{self.where}: tensor {name!r} points at buffer {index}, but the "
                                 f"model has {len(buffers)}", hint="the file is corrupt")
        buf = buffers[index]
        if buf.Offset() > 1:  # > 2 GB models keep their data after the flatbuffer
            start, size = buf.Offset(), buf.Size()
            raw = self.data[start:start + size]
            if len(raw) != size:
                raise ModelLoadError(f"{self.where}: the data of tensor {name!r} is truncated")
        elif buf.DataLength() == 0:
            return None
        else:
            raw = buf.DataAsNumpy().tobytes()
        if dtype == DType.STRING:
            raise QirError(f"{self.where}: string constant {name!r} is not supported")
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.numpy.itemsize
        if len(raw) != expected:
            raise ModelLoadError(f"{self.where}: tensor {name!r} of shape {list(shape)} ({dtype.value}) needs "
                                 f"{expected} bytes but its buffer holds {len(raw)}", hint="the file is corrupt")
        return np.frombuffer(raw, dtype=dtype.numpy.newbyteorder("<")).astype(dtype.numpy).reshape(shape)

    def quant(self, q, dtype: DType, name: str) -> QuantParams | None:
        if q is None or q.ScaleLength() == 0:
            return None
        if q.DetailsType() != 0:
            raise QirError(f"{self.where}: tensor {name!r} uses custom quantization, which qir does not read")
        if not dtype.is_int:
            return None  # float tensors may carry min/max only; nothing to keep
        scale = q.ScaleAsNumpy().astype(np.float64)
        if not np.all(np.isfinite(scale) & (scale > 0)):
            raise ModelLoadError(f"{self.where}: tensor {name!r} has a non-positive or non-finite "
                                 f"quantization scale", hint="the file is corrupt")
        zero_point = q.ZeroPointAsNumpy() if q.ZeroPointLength() else np.zeros(1, np.int64)
        if zero_point.size == 1 and scale.size > 1:
            zero_point = np.repeat(zero_point, scale.size)
        if zero_point.size != scale.size:
            raise ModelLoadError(f"{self.where}: tensor {name!r} has {scale.size} scales but "
                                 f"{zero_point.size} zero points")
        axis = int(q.QuantizedDimension()) if scale.size > 1 else None
        bits = dtype.numpy.itemsize * 8
        return QuantParams(scale, zero_point, bitwidth=bits, signed=dtype.is_signed, axis=axis)

    def operator(self, index: int, o, codes, n_tensors: int) -> TflOperator:
        code_index = o.OpcodeIndex()
        if not 0 <= code_index < len(codes):
            raise ModelLoadError(f"{self.where}: operator {index} has opcode index {code_index}, but the "
                                 f"model has {len(codes)} operator codes", hint="the file is corrupt")
        name, version = codes[code_index]
        inputs = self.indices(o.InputsAsNumpy(), n_tensors, optional=True)
        outputs = self.indices(o.OutputsAsNumpy(), n_tensors)
        return TflOperator(index, name, inputs, outputs, self.options(o), version)

    def options(self, o) -> dict[str, Any]:
        """The builtin options table as {field name: value} (vectors as tuples), read with
        the binding class of the options' type."""
        kind = o.BuiltinOptionsType()
        table = o.BuiltinOptions()
        if kind == 0 or table is None:
            return {}
        cls_name = self.option_classes.get(kind)
        module = getattr(self.tfl, cls_name, None) if cls_name else None
        cls = getattr(module, cls_name, module) if module is not None else None
        if cls is None:
            return {}
        opts = cls()
        opts.Init(table.Bytes, table.Pos)
        return _fields(opts)


def _fields(opts) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, fn in inspect.getmembers(type(opts), inspect.isfunction):
        if name.startswith(("_", "GetRootAs", "Init")) or name.endswith(("Length", "IsNone", "BufferHasIdentifier")):
            continue
        params = inspect.signature(fn).parameters
        if name.endswith("AsNumpy"):
            value = getattr(opts, name)()
            out[name[:-len("AsNumpy")]] = tuple(int(v) for v in value) if isinstance(value, np.ndarray) else ()
        elif len(params) == 1 and name not in out:
            out[name] = getattr(opts, name)()
    return out
