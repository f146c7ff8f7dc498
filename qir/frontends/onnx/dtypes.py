"""ONNX TensorProto element types ↔ qir DTypes."""

from __future__ import annotations

from onnx import TensorProto

from qir.errors import ModelLoadError
from qir.ir.types import DType

TO_DTYPE: dict[int, DType] = {
    TensorProto.FLOAT: DType.FLOAT32, TensorProto.DOUBLE: DType.FLOAT64,
    TensorProto.FLOAT16: DType.FLOAT16, TensorProto.BFLOAT16: DType.BFLOAT16,
    TensorProto.FLOAT8E4M3FN: DType.FLOAT8E4M3FN, TensorProto.FLOAT8E4M3FNUZ: DType.FLOAT8E4M3FNUZ,
    TensorProto.FLOAT8E5M2: DType.FLOAT8E5M2, TensorProto.FLOAT8E5M2FNUZ: DType.FLOAT8E5M2FNUZ,
    TensorProto.INT64: DType.INT64, TensorProto.INT32: DType.INT32, TensorProto.INT16: DType.INT16,
    TensorProto.INT8: DType.INT8, TensorProto.INT4: DType.INT4,
    TensorProto.UINT64: DType.UINT64, TensorProto.UINT32: DType.UINT32,
    TensorProto.UINT16: DType.UINT16, TensorProto.UINT8: DType.UINT8, TensorProto.UINT4: DType.UINT4,
    TensorProto.BOOL: DType.BOOL, TensorProto.STRING: DType.STRING,
    TensorProto.COMPLEX64: DType.COMPLEX64, TensorProto.COMPLEX128: DType.COMPLEX128,
}
for _name, _dtype in (("FLOAT4E2M1", DType.FLOAT4E2M1), ("FLOAT8E8M0", DType.FLOAT8E8M0),
                      ("INT2", DType.INT2), ("UINT2", DType.UINT2),
                      ("FLOAT6E2M3", DType.FLOAT6E2M3), ("FLOAT6E3M2", DType.FLOAT6E3M2)):
    if hasattr(TensorProto, _name):  # newer onnx releases only
        TO_DTYPE[getattr(TensorProto, _name)] = _dtype

FROM_DTYPE: dict[DType, int] = {v: k for k, v in TO_DTYPE.items()}


def to_dtype(elem_type: int, where: str = "") -> DType:
    try:
        return TO_DTYPE[elem_type]
    except KeyError:
        raise ModelLoadError(f"{where}unsupported ONNX element type {elem_type}") from None


def from_dtype(dtype: DType) -> int:
    return FROM_DTYPE[dtype]
