"""TF → qir converters for the nn family: conv, depthwise conv, conv transpose, pooling, fused
batch norm, bias add, activations, softmax, resize.

qir's spatial ops are channels-first (NCHW). A channels-last TF op (``data_format`` NHWC, TF's
default) becomes ``transpose(to NCHW) → op → transpose(to NHWC)``; the ``cancel-transposes`` pass
removes the pairs between consecutive layers. Weights are reordered once, at import time (HWIO →
OIHW), when they are constants. TF's SAME/VALID/EXPLICIT padding becomes explicit pads computed
from the static input shape (SAME: the odd cell at the end, i.e. ONNX's SAME_UPPER, which is what
the op falls back to when the spatial dims are not static).
"""

from __future__ import annotations

import numpy as np

from qir.frontends.tensorflow.registry import converter, simple
from qir.ir.ops.nn import auto_pads


def channels_last(fmt: str) -> bool:
    return not fmt.startswith("NC")


def _spatial_of(values, fmt: str) -> list:
    """The spatial entries of a full-rank list given in ``fmt`` order (strides, ksize, shape)."""
    values = list(values)
    return values[1:-1] if channels_last(fmt) else values[2:]


def to_first(rank: int) -> list[int]:
    return [0, rank - 1, *range(1, rank - 1)]


def to_last(rank: int) -> list[int]:
    return [0, *range(2, rank), 1]


def channels_first_op(ctx, x, fmt: str, rank: int, build):
    """``build(x_nchw) -> y_nchw`` wrapped in layout transposes when ``fmt`` is channels-last."""
    if not channels_last(fmt):
        return build(x)
    y = build(ctx.transpose(x, to_first(rank)))
    return ctx.transpose(y, to_last(rank))


def padding_attrs(ctx, fmt: str, kernel, strides, dilations) -> dict:
    """qir pads (or auto_pad when the spatial dims are not static) for TF's ``padding``."""
    padding = ctx.attr("padding")
    shape = ctx.in_shape(0)
    n = len(kernel)
    if padding == "VALID":
        return {"pads": [0] * (2 * n), "auto_pad": "NOTSET"}
    if padding == "EXPLICIT":
        pairs = np.asarray(ctx.attr("explicit_paddings"), dtype=np.int64).reshape(-1, 2)
        pairs = _spatial_of(pairs, fmt)
        return {"pads": [int(p[0]) for p in pairs] + [int(p[1]) for p in pairs], "auto_pad": "NOTSET"}
    if padding != "SAME":
        raise ctx.fail(f"padding {padding!r} is not supported (SAME, VALID or EXPLICIT)")
    spatial = None if shape is None else _spatial_of(shape, fmt)
    if spatial is None or any(d is None for d in spatial):
        return {"pads": [], "auto_pad": "SAME_UPPER"}
    return {"pads": auto_pads("SAME_UPPER", spatial, kernel, strides, dilations), "auto_pad": "NOTSET"}


def _window(ctx, fmt: str, name: str, rank: int, default: int = 1) -> list[int]:
    values = ctx.attr(name, None)
    if not values:
        return [default] * (rank - 2)
    values = [int(v) for v in values]
    if len(values) != rank or _batch_channel(values, fmt) != [1, 1]:
        raise ctx.fail(f"{name}={values}: only spatial {name} are supported (1 on batch and channels)")
    return _spatial_of(values, fmt)


def _batch_channel(values, fmt):
    return [values[0], values[-1]] if channels_last(fmt) else [values[0], values[1]]


# -- convolutions --------------------------------------------------------------------------

@converter("Conv2D", "Conv3D")
def conv(ctx):
    x, w = ctx.inputs[:2]
    fmt = ctx.attr("data_format", "NHWC")
    ws = ctx.in_shape(1)
    rank = len(ws)
    kernel = [int(k) for k in ws[:-2]]
    strides, dilations = _window(ctx, fmt, "strides", rank), _window(ctx, fmt, "dilations", rank)
    # HWIO (kernel dims, in/group, out) → OIHW
    weight = ctx.transpose(w, [rank - 1, rank - 2, *range(rank - 2)])
    xs = ctx.in_shape(0)
    cin = xs[-1] if channels_last(fmt) else xs[1]
    if cin is None:
        raise ctx.fail("needs a static channel count")
    attrs = {"kernel_shape": kernel, "strides": strides, "dilations": dilations,
             "group": int(cin) // int(ws[-2]),
             **padding_attrs(ctx, fmt, kernel, strides, dilations)}
    return channels_first_op(ctx, x, fmt, rank, lambda xc: ctx.emit("nn.conv", [xc, weight], attrs))


@converter("DepthwiseConv2dNative")
def depthwise_conv(ctx):
    x, w = ctx.inputs[:2]
    fmt = ctx.attr("data_format", "NHWC")
    kh, kw, cin, mult = (int(d) for d in ctx.in_shape(1))
    strides, dilations = _window(ctx, fmt, "strides", 4), _window(ctx, fmt, "dilations", 4)
    # [H, W, C, M] → [H, W, 1, C·M] (output channel c·M + m, as TF orders them) → OIHW
    weight = ctx.emit("tensor.reshape", [w, ctx.ints([kh, kw, 1, cin * mult])], {"allowzero": 0})
    weight = ctx.transpose(weight, [3, 2, 0, 1])
    attrs = {"kernel_shape": [kh, kw], "strides": strides, "dilations": dilations, "group": cin,
             **padding_attrs(ctx, fmt, [kh, kw], strides, dilations)}
    return channels_first_op(ctx, x, fmt, 4, lambda xc: ctx.emit("nn.conv", [xc, weight], attrs))


@converter("Conv2DBackpropInput")
def conv_transpose(ctx):
    """The gradient of a Conv2D with respect to its input (Keras Conv2DTranspose)."""
    w, x = ctx.inputs[1], ctx.inputs[2]
    fmt = ctx.attr("data_format", "NHWC")
    # only the spatial output size matters (the batch may be computed at run time)
    sizes = ctx.const(0)
    sizes = [int(s) for s in sizes] if sizes is not None else list(ctx.out_shape())
    if any(d is None for d in _spatial_of(sizes, fmt)):
        raise ctx.fail("needs a static output size", hint="give input_shapes=...")
    kernel = [int(k) for k in ctx.in_shape(1)[:2]]
    strides, dilations = _window(ctx, fmt, "strides", 4), _window(ctx, fmt, "dilations", 4)
    out_spatial = _spatial_of(sizes, fmt)
    in_shape = ctx.in_shape(2)
    in_spatial = _spatial_of(in_shape, fmt)
    if any(d is None for d in in_spatial):
        raise ctx.fail("needs static spatial dims", hint="give input_shapes=...")
    padding = ctx.attr("padding")
    if padding == "SAME":
        pads = auto_pads("SAME_UPPER", out_spatial, kernel, strides, dilations)
    elif padding == "VALID":
        pads = [0] * 4
    else:  # EXPLICIT: the forward conv's pads
        pairs = _spatial_of(np.asarray(ctx.attr("explicit_paddings")).reshape(-1, 2), fmt)
        pads = [int(p[0]) for p in pairs] + [int(p[1]) for p in pairs]
    full = [s * (i - 1) + (k - 1) * d + 1 for i, k, s, d in zip(in_spatial, kernel, strides, dilations)]
    output_padding = [o - (f - pb - pe) for o, f, pb, pe in zip(out_spatial, full, pads[:2], pads[2:])]
    # filter [H, W, out channels, in channels] → [in channels, out channels, H, W]
    weight = ctx.transpose(w, [3, 2, 0, 1])
    attrs = {"kernel_shape": kernel, "strides": strides, "dilations": dilations, "pads": pads,
             "output_padding": output_padding, "group": 1, "auto_pad": "NOTSET"}
    return channels_first_op(ctx, x, fmt, 4, lambda xc: ctx.emit("nn.conv_transpose", [xc, weight], attrs))


# -- pooling -------------------------------------------------------------------------------

def _pool(ctx, qir_op: str, extra: dict, ksize=None, strides=None):
    x = ctx.inputs[0]
    fmt = ctx.attr("data_format", "NHWC")
    rank = len(ctx.in_shape(0))
    kernel = ksize if ksize is not None else _window(ctx, fmt, "ksize", rank)
    strides = strides if strides is not None else _window(ctx, fmt, "strides", rank)
    dilations = [1] * len(kernel)
    attrs = {"kernel_shape": kernel, "strides": strides, "dilations": dilations, "ceil_mode": 0,
             **padding_attrs(ctx, fmt, kernel, strides, dilations), **extra}
    return channels_first_op(ctx, x, fmt, rank, lambda xc: ctx.emit(qir_op, [xc], attrs))


@converter("MaxPool", "MaxPool3D")
def max_pool(ctx):
    return _pool(ctx, "nn.max_pool", {"storage_order": 0})


@converter("AvgPool", "AvgPool3D")
def avg_pool(ctx):
    return _pool(ctx, "nn.average_pool", {"count_include_pad": 0})  # TF averages valid cells only


@converter("MaxPoolV2")
def max_pool_v2(ctx):
    fmt = ctx.attr("data_format", "NHWC")
    ksize = [int(v) for v in ctx.need_const(1, "ksize")]
    strides = [int(v) for v in ctx.need_const(2, "strides")]
    return _pool(ctx, "nn.max_pool", {"storage_order": 0}, _spatial_of(ksize, fmt), _spatial_of(strides, fmt))


# -- normalization, bias -------------------------------------------------------------------

@converter("FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3")
def fused_batch_norm(ctx):
    if ctx.attr("is_training", False):
        raise ctx.fail("is in training mode (batch statistics); only inference is supported",
                       hint="build the model with training=False (Keras: call it with training=False)")
    x, scale, offset, mean, var = ctx.inputs[:5]
    fmt = ctx.attr("data_format", "NHWC")
    rank = len(ctx.in_shape(0))
    attrs = {"epsilon": float(ctx.attr("epsilon", 1e-4)), "momentum": 0.9, "training_mode": 0}
    y = channels_first_op(ctx, x, fmt, rank, lambda xc: ctx.emit(
        "nn.batch_normalization", [xc, scale, offset, mean, var], attrs))
    return [y]


@converter("BiasAdd", "BiasAddV1")
def bias_add(ctx):
    x, b = ctx.inputs[:2]
    fmt = ctx.attr("data_format", "NHWC")
    rank = len(ctx.in_shape(0))
    if not channels_last(fmt) and rank > 2:
        b = ctx.emit("tensor.reshape", [b, ctx.ints([-1] + [1] * (rank - 2))], {"allowzero": 0})
    return ctx.emit("elementwise.add", [x, b])


# -- activations ---------------------------------------------------------------------------

for _tf, _qir in (("Relu", "nn.relu"), ("Elu", "nn.elu"), ("Sigmoid", "nn.sigmoid"), ("Tanh", "nn.tanh"),
                  ("Softplus", "nn.softplus"), ("Softsign", "nn.softsign")):
    simple(_tf, _qir)
simple("Selu", "nn.selu", alpha=1.6732632423543772, gamma=1.0507009873554805)


@converter("Relu6")
def relu6(ctx):
    x = ctx.inputs[0]
    return ctx.emit("elementwise.clip", [x, ctx.scalar(0, x), ctx.scalar(6, x)])


@converter("LeakyRelu")
def leaky_relu(ctx):
    return ctx.emit("nn.leaky_relu", ctx.inputs, {"alpha": float(ctx.attr("alpha", 0.2))})


@converter("Softmax", "LogSoftmax")
def softmax(ctx):
    rank = len(ctx.in_shape(0))  # TF's softmax ops work on the last axis
    op = "nn.softmax" if ctx.type == "Softmax" else "nn.log_softmax"
    return ctx.emit(op, ctx.inputs, {"axis": rank - 1})


# -- resize --------------------------------------------------------------------------------

#: (TF op, align_corners, half_pixel_centers) → (mode, coordinate transformation, nearest mode).
#: TF's nearest neighbour rounds floor((y + 0.5)·in/out) with half-pixel centers, which is ONNX
#: half_pixel with round_prefer_ceil; its legacy mode floors y·in/out (asymmetric + floor).
_RESIZE = {
    ("ResizeBilinear", False, False): ("linear", "asymmetric", "floor"),
    ("ResizeBilinear", True, False): ("linear", "align_corners", "floor"),
    ("ResizeBilinear", False, True): ("linear", "half_pixel", "floor"),
    ("ResizeNearestNeighbor", False, False): ("nearest", "asymmetric", "floor"),
    ("ResizeNearestNeighbor", True, False): ("nearest", "align_corners", "round_prefer_ceil"),
    ("ResizeNearestNeighbor", False, True): ("nearest", "half_pixel", "round_prefer_ceil"),
}


@converter("ResizeBilinear", "ResizeNearestNeighbor")
def resize(ctx):
    x, size = ctx.inputs[:2]
    key = (ctx.type, bool(ctx.attr("align_corners", False)), bool(ctx.attr("half_pixel_centers", False)))
    if key not in _RESIZE:
        raise ctx.fail("with both align_corners and half_pixel_centers set is not supported")
    mode, transform, nearest = _RESIZE[key]
    if ctx.in_dtype(0) != ctx.out_dtype(0):  # ResizeBilinear computes in float32
        x = ctx.emit("elementwise.cast", [x], {"to": ctx.out_dtype(0), "saturate": 1, "round_mode": "up"})
    attrs = {"mode": mode, "coordinate_transformation_mode": transform, "nearest_mode": nearest,
             "axes": [1, 2], "antialias": 0, "cubic_coeff_a": -0.75, "exclude_outside": 0,
             "extrapolation_value": 0.0, "keep_aspect_ratio_policy": "stretch"}
    # resize works on any axes, so the NHWC image is resized in place along H and W
    return ctx.emit("tensor.resize", [x, None, None, ctx.int64(size)], attrs)
