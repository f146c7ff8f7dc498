"""Tensor types of the IR: DType, shapes with symbolic dims, QuantParams, Sequence/Optional types."""

from __future__ import annotations

import enum
from typing import Union

import attrs
import ml_dtypes
import numpy as np

from qir.errors import QirError

#: A dimension is a non-negative int, or a symbol name ("N", "seq") bound at run time.
Dim = Union[int, str]


class DType(enum.Enum):
    """Element types: every ONNX tensor type. The value is the short name used in textual IR."""

    FLOAT32 = "f32"
    FLOAT64 = "f64"
    FLOAT16 = "f16"
    BFLOAT16 = "bf16"
    FLOAT8E4M3FN = "f8e4m3fn"
    FLOAT8E4M3FNUZ = "f8e4m3fnuz"
    FLOAT8E5M2 = "f8e5m2"
    FLOAT8E5M2FNUZ = "f8e5m2fnuz"
    FLOAT8E8M0 = "f8e8m0"
    FLOAT4E2M1 = "f4e2m1"
    FLOAT6E2M3 = "f6e2m3"
    FLOAT6E3M2 = "f6e3m2"
    INT64 = "i64"
    INT32 = "i32"
    INT16 = "i16"
    INT8 = "i8"
    INT4 = "i4"
    INT2 = "i2"
    UINT64 = "u64"
    UINT32 = "u32"
    UINT16 = "u16"
    UINT8 = "u8"
    UINT4 = "u4"
    UINT2 = "u2"
    BOOL = "bool"
    STRING = "str"
    COMPLEX64 = "c64"
    COMPLEX128 = "c128"

    @property
    def numpy(self) -> np.dtype:
        """The numpy dtype that holds this type's values (ml_dtypes for the exotic ones)."""
        return _NUMPY[self]

    @classmethod
    def from_numpy(cls, dtype) -> "DType":
        dtype = np.dtype(dtype)
        if dtype.kind in "OUS":
            return cls.STRING
        try:
            return _FROM_NUMPY[dtype]
        except KeyError:
            raise QirError(f"numpy dtype {dtype} has no qir equivalent") from None

    @classmethod
    def parse(cls, short: str) -> "DType":
        try:
            return cls(short)
        except ValueError:
            raise QirError(f"unknown dtype {short!r}; known: {', '.join(d.value for d in cls)}") from None

    @property
    def is_float(self) -> bool:
        return self.name.startswith(("FLOAT", "BFLOAT"))

    @property
    def is_int(self) -> bool:
        return self.name.startswith(("INT", "UINT"))

    @property
    def is_signed(self) -> bool:
        return not self.name.startswith(("UINT", "BOOL", "STRING"))

    def __repr__(self) -> str:
        return f"DType.{self.name}"


_NUMPY: dict[DType, np.dtype] = {
    DType.FLOAT32: np.dtype(np.float32),
    DType.FLOAT64: np.dtype(np.float64),
    DType.FLOAT16: np.dtype(np.float16),
    DType.BFLOAT16: np.dtype(ml_dtypes.bfloat16),
    DType.FLOAT8E4M3FN: np.dtype(ml_dtypes.float8_e4m3fn),
    DType.FLOAT8E4M3FNUZ: np.dtype(ml_dtypes.float8_e4m3fnuz),
    DType.FLOAT8E5M2: np.dtype(ml_dtypes.float8_e5m2),
    DType.FLOAT8E5M2FNUZ: np.dtype(ml_dtypes.float8_e5m2fnuz),
    DType.FLOAT8E8M0: np.dtype(ml_dtypes.float8_e8m0fnu),
    DType.FLOAT4E2M1: np.dtype(ml_dtypes.float4_e2m1fn),
    DType.FLOAT6E2M3: np.dtype(ml_dtypes.float6_e2m3fn),
    DType.FLOAT6E3M2: np.dtype(ml_dtypes.float6_e3m2fn),
    DType.INT64: np.dtype(np.int64),
    DType.INT32: np.dtype(np.int32),
    DType.INT16: np.dtype(np.int16),
    DType.INT8: np.dtype(np.int8),
    DType.INT4: np.dtype(ml_dtypes.int4),
    DType.INT2: np.dtype(ml_dtypes.int2),
    DType.UINT64: np.dtype(np.uint64),
    DType.UINT32: np.dtype(np.uint32),
    DType.UINT16: np.dtype(np.uint16),
    DType.UINT8: np.dtype(np.uint8),
    DType.UINT4: np.dtype(ml_dtypes.uint4),
    DType.UINT2: np.dtype(ml_dtypes.uint2),
    DType.BOOL: np.dtype(np.bool_),
    DType.STRING: np.dtype(object),
    DType.COMPLEX64: np.dtype(np.complex64),
    DType.COMPLEX128: np.dtype(np.complex128),
}
_FROM_NUMPY = {v: k for k, v in _NUMPY.items()}


def _freeze_shape(shape):
    return None if shape is None else tuple(d if isinstance(d, str) else int(d) for d in shape)


@attrs.frozen
class QuantParams:
    """Quantization of a tensor: real = scale × (q − zero_point).

    Per-tensor when ``axis`` is None, else per-channel along ``axis`` (scale and zero_point
    then hold one entry per channel). QNN/AIMET ``offset`` is ``-zero_point``.
    """

    scale: tuple[float, ...] = attrs.field(converter=lambda s: tuple(float(x) for x in np.atleast_1d(s)))
    zero_point: tuple[int, ...] = attrs.field(converter=lambda z: tuple(int(x) for x in np.atleast_1d(z)))
    bitwidth: int = 8
    signed: bool = True
    axis: int | None = None


@attrs.frozen
class TensorType:
    """A tensor's element type, shape (None = unknown rank) and optional quantization."""

    dtype: DType
    shape: tuple[Dim, ...] | None = attrs.field(default=None, converter=_freeze_shape)
    quant: QuantParams | None = None

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def is_static(self) -> bool:
        """True when every dim is a known integer."""
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)

    def with_shape(self, shape) -> "TensorType":
        return attrs.evolve(self, shape=shape)

    def __str__(self) -> str:
        from qir.ir.printer import format_type

        return format_type(self)


@attrs.frozen
class SequenceType:
    """An ONNX sequence of tensors (or of other types)."""

    elem: "Type"

    def __str__(self) -> str:
        from qir.ir.printer import format_type

        return format_type(self)


@attrs.frozen
class OptionalType:
    """An ONNX optional: a value of ``elem`` type, or none."""

    elem: "Type"

    def __str__(self) -> str:
        from qir.ir.printer import format_type

        return format_type(self)


Type = Union[TensorType, SequenceType, OptionalType]


def tensor_type_of(array: np.ndarray) -> TensorType:
    """The static TensorType of a numpy array."""
    array = np.asarray(array)
    return TensorType(DType.from_numpy(array.dtype), array.shape)


def type_of_runtime_value(value) -> Type:
    """The type of a value the interpreter holds: array, list (sequence) or None (empty optional)."""
    if isinstance(value, list):
        elem = type_of_runtime_value(value[0]) if value else TensorType(DType.FLOAT32, None)
        return SequenceType(elem)
    return tensor_type_of(value)
