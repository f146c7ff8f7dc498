"""ONNX → qir converters for the linalg family: MatMul, Gemm, Einsum, Det, MatMulInteger and the
signal ops (DFT, STFT, Hann/Hamming/Blackman windows, MelWeightMatrix).

Older opset forms are upgraded here: Gemm's ``broadcast`` attribute (opsets 1-6; broadcasting
is always on since 7) is dropped, DFT-17's ``axis`` attribute becomes a constant input, and
``output_datatype`` enums become DTypes.
"""

from __future__ import annotations

from onnx import TensorProto

from qir.frontends.onnx.registry import converter, simple

simple("MatMul", "linalg.matmul")
simple("Einsum", "linalg.einsum")
simple("Det", "linalg.det")
simple("MatMulInteger", "linalg.matmul_integer")
simple("STFT", "linalg.stft")


@converter("Gemm", qir_op="linalg.gemm")
def gemm(ctx):
    """Gemm before opset 7 had ``broadcast`` (C broadcast on request); qir always broadcasts."""
    attrs = {"alpha": float(ctx.attrs.get("alpha", 1.0)), "beta": float(ctx.attrs.get("beta", 1.0)),
             "transA": int(ctx.attrs.get("transA", 0)), "transB": int(ctx.attrs.get("transB", 0))}
    return ctx.emit("linalg.gemm", ctx.inputs, attrs)


@converter("DFT", qir_op="linalg.dft")
def dft(ctx):
    """DFT-17 takes ``axis`` as an attribute (default 1); DFT-20 as an input (default -2)."""
    inputs = list(ctx.inputs) + [None] * (3 - len(ctx.inputs))
    x, length, axis = inputs[:3]
    if ctx.opset < 20:
        axis = ctx.const_ints(int(ctx.attrs.get("axis", 1)))
    shape = getattr(x.type, "shape", None)
    value = ctx.value_of(axis)
    if shape is not None and (axis is None or value is not None):
        # Make the axis explicit and non-negative now that the rank is known.
        a = -2 if axis is None else int(value.reshape(-1)[0])
        if not -len(shape) <= a < len(shape) - 1 or a == -1:
            raise ctx.fail(f"axis {a} is out of range for an input of rank {len(shape)}")
        axis = ctx.const_ints(a % len(shape))
    attrs = {"inverse": int(ctx.attrs.get("inverse", 0)), "onesided": int(ctx.attrs.get("onesided", 0))}
    args = [x, length, axis]
    while args and args[-1] is None:
        args.pop()
    return ctx.emit("linalg.dft", args, attrs)


def _datatype_converter(op_type: str, qir_op: str) -> None:
    """An op whose only conversion is the ``output_datatype`` enum → DType."""

    def convert(ctx):
        attrs = dict(ctx.attrs)
        attrs["output_datatype"] = ctx.dtype(int(attrs.get("output_datatype", TensorProto.FLOAT)))
        return ctx.emit(qir_op, ctx.inputs, attrs)

    convert.__name__ = f"convert_{op_type}"
    converter(op_type, qir_op=qir_op)(convert)


for _op_type, _qir_op in (("HannWindow", "linalg.hann_window"), ("HammingWindow", "linalg.hamming_window"),
                          ("BlackmanWindow", "linalg.blackman_window"),
                          ("MelWeightMatrix", "linalg.mel_weight_matrix")):
    _datatype_converter(_op_type, _qir_op)
