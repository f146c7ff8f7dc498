"""Converters of TFLite builtin operators (registry keyed by builtin name).

Each converter reads its inputs in float through the context (``real``, ``nchw_input``,
``weight``), builds qir ops with every attribute explicit, and hands the float result to
``set_output`` / ``set_nhwc_output``, which apply the fused activation and quantize when
the output tensor is quantized. Option names are the flatbuffer fields (schema.fbs).
"""

from __future__ import annotations

import numpy as np

from qir.frontends.tflite.importer import OpContext, converter
from qir.ir.types import DType

_SAME, _VALID = 0, 1
_INT64_MAX = np.iinfo(np.int64).max
_INT64_MIN = np.iinfo(np.int64).min


# -- conv and pool --------------------------------------------------------------------------

def _window_attrs(ctx: OpContext, kernel: tuple[int, int], strides: tuple[int, int],
                  dilations: tuple[int, int]) -> dict:
    """ONNX pads for TFLite's SAME/VALID padding (SAME: the extra pixel goes at the end,
    ONNX's SAME_UPPER); explicit pads where the spatial dims are known."""
    padding = ctx.options.get("Padding", _VALID)
    if padding == _VALID:
        return {"auto_pad": "NOTSET", "pads": [0, 0, 0, 0]}
    shape = ctx.tensor(0).shape
    if ctx.tensor(0).signature is not None and any(d < 0 for d in ctx.tensor(0).signature[1:3]):
        return {"auto_pad": "SAME_UPPER", "pads": []}
    begins, ends = [], []
    for size, k, s, d in zip(shape[1:3], kernel, strides, dilations):
        out = -(-size // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        begins.append(total // 2)
        ends.append(total - total // 2)
    return {"auto_pad": "NOTSET", "pads": begins + ends}


def _strides(ctx: OpContext) -> tuple[int, int]:
    return ctx.options.get("StrideH", 1), ctx.options.get("StrideW", 1)


def _dilations(ctx: OpContext) -> tuple[int, int]:
    return ctx.options.get("DilationHFactor", 1), ctx.options.get("DilationWFactor", 1)


def _conv(ctx: OpContext, w, kernel: tuple[int, int], group: int) -> None:
    strides, dilations = _strides(ctx), _dilations(ctx)
    attrs = {"dilations": list(dilations), "kernel_shape": list(kernel), "strides": list(strides),
             "group": group, **_window_attrs(ctx, kernel, strides, dilations)}
    inputs = [ctx.nchw_input(0), w, ctx.bias(2, 0, 1)]
    ctx.set_nhwc_output(0, ctx.emit("nn.conv", inputs if inputs[2] is not None else inputs[:2], attrs))


@converter("CONV_2D")
def conv_2d(ctx: OpContext) -> None:
    _, kh, kw, cin_per_group = ctx.tensor(1).shape  # OHWI
    channels = ctx.tensor(0).shape[3]
    if channels % cin_per_group:
        raise ctx.fail(f"input has {channels} channels, not a multiple of the filter's {cin_per_group}")
    _conv(ctx, ctx.weight(1, (0, 3, 1, 2)), (kh, kw), channels // cin_per_group)


@converter("DEPTHWISE_CONV_2D")
def depthwise_conv_2d(ctx: OpContext) -> None:
    _, kh, kw, out_channels = ctx.tensor(1).shape  # 1HWO, O = C_in × depth_multiplier
    channels = ctx.tensor(0).shape[3]
    # The multiplier is O / C_in, as TFLite's kernel derives it (the depth_multiplier option
    # is not reliable in converted files).
    if out_channels % channels:
        raise ctx.fail(f"filter has {out_channels} channels, not a multiple of the input's {channels}")
    # 1HWO → O1HW: a grouped conv with one group per input channel.
    _conv(ctx, ctx.weight(1, (3, 0, 1, 2)), (kh, kw), channels)


def _pool(ctx: OpContext, op: str, extra: dict) -> None:
    kernel = ctx.options.get("FilterHeight", 1), ctx.options.get("FilterWidth", 1)
    strides = _strides(ctx)
    attrs = {"dilations": [1, 1], "kernel_shape": list(kernel), "strides": list(strides), "ceil_mode": 0,
             **_window_attrs(ctx, kernel, strides, (1, 1)), **extra}
    ctx.set_nhwc_output(0, ctx.emit(op, [ctx.nchw_input(0)], attrs))


@converter("AVERAGE_POOL_2D")
def average_pool_2d(ctx: OpContext) -> None:
    # TF's SAME average pooling divides by the number of real (unpadded) elements.
    _pool(ctx, "nn.average_pool", {"count_include_pad": 0})


@converter("MAX_POOL_2D")
def max_pool_2d(ctx: OpContext) -> None:
    _pool(ctx, "nn.max_pool", {"storage_order": 0})


# -- matmul ---------------------------------------------------------------------------------

@converter("FULLY_CONNECTED")
def fully_connected(ctx: OpContext) -> None:
    if ctx.options.get("WeightsFormat", 0) != 0:
        raise ctx.fail("shuffled weights formats are not supported")
    x_shape = ctx.tensor(0).shape
    k = ctx.tensor(1).shape[1]  # weights [O, K]
    x = ctx.real(0)
    bias = ctx.bias(2, 0, 1)
    if len(x_shape) > 2 and ctx.options.get("KeepNumDims", False):
        y = ctx.emit("linalg.matmul", [x, ctx.weight(1, (1, 0))])
        if bias is not None:
            y = ctx.emit("elementwise.add", [y, bias])
    else:
        if len(x_shape) != 2:  # TFLite flattens all leading dims
            x = ctx.emit("tensor.reshape", [x, ctx.ints([-1, k], "shape")], {"allowzero": 0})
        inputs = [x, ctx.real(1)] + ([bias] if bias is not None else [])
        y = ctx.emit("linalg.gemm", inputs, {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 1})
    ctx.set_output(0, y)


def _swap_last(ctx: OpContext, value, rank: int):
    perm = list(range(rank))
    perm[-2], perm[-1] = perm[-1], perm[-2]
    return ctx.transpose(value, perm)


@converter("BATCH_MATMUL")
def batch_matmul(ctx: OpContext) -> None:
    a, b = ctx.real(0), ctx.real(1)
    if ctx.options.get("AdjX", False):
        a = _swap_last(ctx, a, len(ctx.tensor(0).shape))
    if ctx.options.get("AdjY", False):
        b = _swap_last(ctx, b, len(ctx.tensor(1).shape))
    ctx.set_output(0, ctx.emit("linalg.matmul", [a, b]))


# -- elementwise ----------------------------------------------------------------------------

def _binary(op: str):
    def convert(ctx: OpContext) -> None:
        ctx.set_output(0, ctx.emit(op, [ctx.real(0), ctx.real(1)]))
    return convert


for _name, _op in {"ADD": "elementwise.add", "SUB": "elementwise.sub", "MUL": "elementwise.mul",
                   "DIV": "elementwise.div", "MAXIMUM": "elementwise.max", "MINIMUM": "elementwise.min",
                   "POW": "elementwise.pow"}.items():
    converter(_name)(_binary(_op))


def _unary(op: str):
    def convert(ctx: OpContext) -> None:
        ctx.set_output(0, ctx.emit(op, [ctx.real(0)]), fused=False)
    return convert


for _name, _op in {"RELU": "nn.relu", "LOGISTIC": "nn.sigmoid", "TANH": "nn.tanh",
                   "HARD_SWISH": "nn.hard_swish", "EXP": "elementwise.exp", "ABS": "elementwise.abs",
                   "SQRT": "elementwise.sqrt", "NEG": "elementwise.neg", "LOG": "elementwise.log",
                   "FLOOR": "elementwise.floor"}.items():
    converter(_name)(_unary(_op))


@converter("RELU6")
def relu6(ctx: OpContext) -> None:
    ctx.set_output(0, ctx.clip(ctx.real(0), 0.0, 6.0), fused=False)


@converter("RELU_N1_TO_1")
def relu_n1_to_1(ctx: OpContext) -> None:
    ctx.set_output(0, ctx.clip(ctx.real(0), -1.0, 1.0), fused=False)


@converter("LEAKY_RELU")
def leaky_relu(ctx: OpContext) -> None:
    ctx.set_output(0, ctx.emit("nn.leaky_relu", [ctx.real(0)], {"alpha": float(ctx.options.get("Alpha", 0.2))}),
                   fused=False)


@converter("RSQRT")
def rsqrt(ctx: OpContext) -> None:
    ctx.set_output(0, ctx.emit("elementwise.reciprocal", [ctx.emit("elementwise.sqrt", [ctx.real(0)])]), fused=False)


@converter("SQUARE")
def square(ctx: OpContext) -> None:
    x = ctx.real(0)
    ctx.set_output(0, ctx.emit("elementwise.mul", [x, x]), fused=False)


@converter("SQUARED_DIFFERENCE")
def squared_difference(ctx: OpContext) -> None:
    d = ctx.emit("elementwise.sub", [ctx.real(0), ctx.real(1)])
    ctx.set_output(0, ctx.emit("elementwise.mul", [d, d]), fused=False)


@converter("SOFTMAX")
def softmax(ctx: OpContext) -> None:
    x = ctx.real(0)
    beta = float(ctx.options.get("Beta", 1.0))
    if beta != 1.0:
        x = ctx.emit("elementwise.mul", [x, ctx.const_value(np.float32(beta), name="beta")])
    ctx.set_output(0, ctx.emit("nn.softmax", [x], {"axis": -1}), fused=False)


# -- reductions -----------------------------------------------------------------------------

def _reduce(op: str):
    def convert(ctx: OpContext) -> None:
        axes = ctx.const(1, "axes").reshape(-1).astype(np.int64)
        attrs = {"keepdims": int(bool(ctx.options.get("KeepDims", False))),
                 "noop_with_empty_axes": 1}  # TFLite: no axes → no reduction
        ctx.set_output(0, ctx.emit(op, [ctx.real(0), ctx.ints(axes, "axes")], attrs), fused=False)
    return convert


for _name, _op in {"MEAN": "reduce.mean", "SUM": "reduce.sum", "REDUCE_MAX": "reduce.max",
                   "REDUCE_MIN": "reduce.min", "REDUCE_PROD": "reduce.prod"}.items():
    converter(_name)(_reduce(_op))


# -- shape and data movement ----------------------------------------------------------------

@converter("RESHAPE")
def reshape(ctx: OpContext) -> None:
    out = ctx.out_tensor(0)
    signature = out.signature if out.signature is not None else out.shape
    if ctx.has(1) and ctx.tensor(1).data is None and sum(d < 0 for d in signature) <= 1:
        # A shape computed at run time (Keras: SHAPE → STRIDED_SLICE → PACK for the batch):
        # the output's signature says the same with at most one unknown, as a constant.
        shape = ctx.ints(signature, "shape")
        allowzero = int(0 in signature and -1 not in signature)
    elif ctx.has(1) and ctx.tensor(1).data is None:
        shape = ctx.emit("elementwise.cast", [ctx.raw(1)], {"to": DType.INT64, "saturate": 1, "round_mode": "up"})
        allowzero = 0
    else:
        dims = ctx.const(1, "shape") if ctx.has(1) else np.asarray(ctx.options.get("NewShape", ()))
        dims = dims.reshape(-1).astype(np.int64)
        # TFLite's 0 is a literal zero-sized dim, ONNX's (allowzero=0) copies the input dim.
        allowzero = int(0 in dims and -1 not in dims)
        shape = ctx.ints(dims, "shape")
    ctx.set_output(0, ctx.emit("tensor.reshape", [ctx.real(0), shape], {"allowzero": allowzero}), fused=False)


@converter("TRANSPOSE")
def transpose(ctx: OpContext) -> None:
    perm = [int(p) for p in ctx.const(1, "permutation").reshape(-1)]
    ctx.set_output(0, ctx.transpose(ctx.real(0), perm), fused=False)


@converter("CONCATENATION")
def concatenation(ctx: OpContext) -> None:
    inputs = [ctx.real(i) for i in range(ctx.num_inputs)]
    ctx.set_output(0, ctx.emit("tensor.concat", inputs, {"axis": int(ctx.options.get("Axis", 0))}))


@converter("PAD", "PADV2")
def pad(ctx: OpContext) -> None:
    paddings = ctx.const(1, "paddings").reshape(-1, 2).astype(np.int64)  # [[before, after], ...]
    pads = ctx.ints(np.concatenate([paddings[:, 0], paddings[:, 1]]), "pads")
    # Quantized PAD fills with the zero point, i.e. real 0: the float pad then quantizes to it.
    value = ctx.real(2) if ctx.has(2) else None
    inputs = [ctx.real(0), pads] + ([value] if value is not None else [])
    ctx.set_output(0, ctx.emit("tensor.pad", inputs, {"mode": "constant"}), fused=False)


@converter("SQUEEZE")
def squeeze(ctx: OpContext) -> None:
    dims = tuple(ctx.options.get("SqueezeDims", ()))
    if dims:
        ctx.set_output(0, ctx.emit("tensor.squeeze", [ctx.real(0), ctx.ints(dims, "axes")]), fused=False)
    else:  # all size-1 dims, from the static shape
        shape = ctx.tensor(0).shape
        axes = [i for i, d in enumerate(shape) if d == 1]
        ctx.set_output(0, ctx.emit("tensor.squeeze", [ctx.real(0), ctx.ints(axes, "axes")]), fused=False)


@converter("EXPAND_DIMS")
def expand_dims(ctx: OpContext) -> None:
    axis = int(ctx.const(1, "axis").reshape(-1)[0])
    rank = len(ctx.tensor(0).shape)
    axis = axis + rank + 1 if axis < 0 else axis
    ctx.set_output(0, ctx.emit("tensor.unsqueeze", [ctx.real(0), ctx.ints([axis], "axes")]), fused=False)


@converter("STRIDED_SLICE")
def strided_slice(ctx: OpContext) -> None:
    o = ctx.options
    if o.get("EllipsisMask", 0) or o.get("NewAxisMask", 0):
        raise ctx.fail("ellipsis_mask and new_axis_mask are not supported")
    begin = ctx.const(1, "begin").reshape(-1).astype(np.int64)
    end = ctx.const(2, "end").reshape(-1).astype(np.int64)
    strides = ctx.const(3, "strides").reshape(-1).astype(np.int64) if ctx.has(3) else np.ones_like(begin)
    starts, ends, shrink = [], [], []
    for axis, (b, e, s) in enumerate(zip(begin, end, strides)):
        if o.get("Offset", False):
            e = b + e
        if o.get("BeginMask", 0) >> axis & 1:
            b = 0 if s > 0 else _INT64_MAX
        if o.get("EndMask", 0) >> axis & 1:
            e = _INT64_MAX if s > 0 else _INT64_MIN
        if o.get("ShrinkAxisMask", 0) >> axis & 1:
            e, s = (_INT64_MAX if b == -1 else b + 1), 1
            shrink.append(axis)
        starts.append(b)
        ends.append(e)
    axes = list(range(len(begin)))
    y = ctx.emit("tensor.slice", [ctx.real(0), ctx.ints(starts, "starts"), ctx.ints(ends, "ends"),
                                  ctx.ints(axes, "axes"), ctx.ints(strides, "steps")])
    if shrink:
        y = ctx.emit("tensor.squeeze", [y, ctx.ints(shrink, "axes")])
    ctx.set_output(0, y, fused=False)


@converter("SLICE")
def slice_(ctx: OpContext) -> None:
    begin = ctx.const(1, "begin").reshape(-1).astype(np.int64)
    size = ctx.const(2, "size").reshape(-1).astype(np.int64)
    ends = np.where(size < 0, _INT64_MAX, begin + size)  # size −1: to the end
    axes = np.arange(begin.size)
    y = ctx.emit("tensor.slice", [ctx.real(0), ctx.ints(begin, "starts"), ctx.ints(ends, "ends"),
                                  ctx.ints(axes, "axes"), ctx.ints(np.ones_like(begin), "steps")])
    ctx.set_output(0, y, fused=False)


@converter("PACK")
def pack(ctx: OpContext) -> None:
    axis = int(ctx.options.get("Axis", 0))
    rank = len(ctx.tensor(0).shape)
    axis = axis + rank + 1 if axis < 0 else axis
    parts = [ctx.emit("tensor.unsqueeze", [ctx.real(i), ctx.ints([axis], "axes")]) for i in range(ctx.num_inputs)]
    ctx.set_output(0, ctx.emit("tensor.concat", parts, {"axis": axis}), fused=False)


@converter("TILE")
def tile(ctx: OpContext) -> None:
    if ctx.tensor(1).data is not None:
        repeats = ctx.ints(ctx.tensor(1).data, "repeats")
    else:
        repeats = ctx.emit("elementwise.cast", [ctx.raw(1)], {"to": DType.INT64, "saturate": 1, "round_mode": "up"})
    ctx.set_output(0, ctx.emit("tensor.tile", [ctx.real(0), repeats]), fused=False)


@converter("SHAPE")
def shape(ctx: OpContext) -> None:
    # qir's Shape gives int64; set_output casts to TFLite's out_type (int32 by default).
    ctx.set_output(0, ctx.emit("tensor.shape", [ctx.raw(0)], {"start": 0, "end": None}), fused=False)


@converter("CAST")
def cast(ctx: OpContext) -> None:
    ctx.set_output(0, ctx.real(0), fused=False)  # set_output casts to the output tensor's type


def _spatial(ctx: OpContext) -> tuple[tuple[int, ...], int]:
    shape = ctx.tensor(0).shape
    if len(shape) != 4 or ctx.const(1, "block shape").size != 2:
        raise ctx.fail("only 4-D NHWC tensors with a 2-D block are supported")
    return shape, int(shape[3])


@converter("SPACE_TO_BATCH_ND")
def space_to_batch_nd(ctx: OpContext) -> None:
    # [B,H,W,C] → pad → [B,H'/bh,bh,W'/bw,bw,C] → [bh,bw,B,H'/bh,W'/bw,C] → [bh·bw·B,H'/bh,W'/bw,C]
    # (what TF emits around dilated convolutions).
    shape, c = _spatial(ctx)
    bh, bw = (int(b) for b in ctx.const(1, "block shape").reshape(-1))
    pads = ctx.const(2, "paddings").reshape(2, 2).astype(np.int64)
    h, w = shape[1] + pads[0].sum(), shape[2] + pads[1].sum()
    x = ctx.emit("tensor.pad", [ctx.real(0), ctx.ints([0, pads[0, 0], pads[1, 0], 0, 0, pads[0, 1], pads[1, 1], 0], "pads")],
                 {"mode": "constant"})
    x = ctx.emit("tensor.reshape", [x, ctx.ints([-1, h // bh, bh, w // bw, bw, c], "shape")], {"allowzero": 0})
    x = ctx.transpose(x, (2, 4, 0, 1, 3, 5))
    x = ctx.emit("tensor.reshape", [x, ctx.ints([-1, h // bh, w // bw, c], "shape")], {"allowzero": 0})
    ctx.set_output(0, x, fused=False)


@converter("BATCH_TO_SPACE_ND")
def batch_to_space_nd(ctx: OpContext) -> None:
    # The inverse: [bh·bw·B,H,W,C] → [bh,bw,B,H,W,C] → [B,H,bh,W,bw,C] → [B,H·bh,W·bw,C] → crop.
    shape, c = _spatial(ctx)
    bh, bw = (int(b) for b in ctx.const(1, "block shape").reshape(-1))
    crops = ctx.const(2, "crops").reshape(2, 2).astype(np.int64)
    h, w = shape[1], shape[2]
    x = ctx.emit("tensor.reshape", [ctx.real(0), ctx.ints([bh, bw, -1, h, w, c], "shape")], {"allowzero": 0})
    x = ctx.transpose(x, (2, 3, 0, 4, 1, 5))
    x = ctx.emit("tensor.reshape", [x, ctx.ints([-1, h * bh, w * bw, c], "shape")], {"allowzero": 0})
    starts, ends = crops[:, 0], [h * bh - crops[0, 1], w * bw - crops[1, 1]]
    x = ctx.emit("tensor.slice", [x, ctx.ints(starts, "starts"), ctx.ints(ends, "ends"), ctx.ints([1, 2], "axes"),
                                  ctx.ints([1, 1], "steps")])
    ctx.set_output(0, x, fused=False)


@converter("GATHER")
def gather(ctx: OpContext) -> None:
    if ctx.options.get("BatchDims", 0):
        raise ctx.fail("batch_dims other than 0 is not supported")
    y = ctx.emit("tensor.gather", [ctx.real(0), ctx.raw(1)], {"axis": int(ctx.options.get("Axis", 0))})
    ctx.set_output(0, y, fused=False)


def _resize(ctx: OpContext, mode: str) -> None:
    size = ctx.const(1, "size").reshape(-1).astype(np.int64)
    align, half = ctx.options.get("AlignCorners", False), ctx.options.get("HalfPixelCenters", False)
    if mode == "linear":
        transform = "align_corners" if align else "half_pixel" if half else "asymmetric"
        nearest = "floor"
    else:
        # TFLite: floor((y + 0.5) / s) with half-pixel centers, which is ONNX's half_pixel
        # (y + 0.5) / s − 0.5 rounded half up; round half up with align_corners; else floor(y / s).
        transform = "align_corners" if align else "half_pixel" if half else "asymmetric"
        nearest = "round_prefer_ceil" if align or half else "floor"
    attrs = {"antialias": 0, "axes": [1, 2], "coordinate_transformation_mode": transform,
             "cubic_coeff_a": -0.75, "exclude_outside": 0, "extrapolation_value": 0.0,
             "keep_aspect_ratio_policy": "stretch", "mode": mode, "nearest_mode": nearest}
    y = ctx.emit("tensor.resize", [ctx.real(0), None, None, ctx.ints(size, "sizes")], attrs)
    ctx.set_output(0, y, fused=False)


@converter("RESIZE_BILINEAR")
def resize_bilinear(ctx: OpContext) -> None:
    _resize(ctx, "linear")


@converter("RESIZE_NEAREST_NEIGHBOR")
def resize_nearest_neighbor(ctx: OpContext) -> None:
    _resize(ctx, "nearest")


# -- quantization ---------------------------------------------------------------------------

@converter("QUANTIZE")
def quantize(ctx: OpContext) -> None:
    # float → int (quantize) or int → int (requantize: dequantize, then quantize again).
    ctx.set_output(0, ctx.real(0), fused=False)


@converter("DEQUANTIZE")
def dequantize(ctx: OpContext) -> None:
    # int → float, or float16 weights → float32 (to_tensor_type casts).
    ctx.set_output(0, ctx.real(0), fused=False)

