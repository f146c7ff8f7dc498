"""ONNX → qir converters for the nn family (activations, softmax, conv, pooling, normalization,
dropout, recurrent ops, attention).

qir's nn ops have the newest ONNX semantics with every attribute explicit; the converters here
upgrade older opsets: legacy attributes (consumed_inputs, is_test, spatial) are dropped, attributes
that became inputs become constants, pre-13 softmax axis semantics (flatten to 2-D at ``axis``)
become reshapes around a one-axis softmax, and ``auto_pad`` is resolved to explicit pads when the
input's spatial shape is static.
"""

from __future__ import annotations

import numpy as np

from qir.frontends.onnx.registry import converter, simple
from qir.ir.ops.nn import auto_pads, conv_transpose_geometry
from qir.ir.types import TensorType

_LEGACY = ("consumed_inputs",)


def _shape(value):
    t = None if value is None else value.type
    return t.shape if isinstance(t, TensorType) else None


def _static(dims) -> bool:
    return dims is not None and all(isinstance(d, int) for d in dims)


def _rank(value) -> int | None:
    shape = _shape(value)
    return None if shape is None else len(shape)


# -- activations ---------------------------------------------------------------------------

for _onnx, _qir in (("Relu", "nn.relu"), ("LeakyRelu", "nn.leaky_relu"), ("Elu", "nn.elu"),
                    ("Selu", "nn.selu"), ("Celu", "nn.celu"), ("Sigmoid", "nn.sigmoid"),
                    ("HardSigmoid", "nn.hard_sigmoid"), ("HardSwish", "nn.hard_swish"),
                    ("Softplus", "nn.softplus"), ("Softsign", "nn.softsign"), ("Tanh", "nn.tanh"),
                    ("Gelu", "nn.gelu"), ("Mish", "nn.mish"), ("ThresholdedRelu", "nn.thresholded_relu"),
                    ("Swish", "nn.swish")):
    simple(_onnx, _qir, drop=_LEGACY)
simple("SwiGLU", "nn.swiglu")


@converter("PRelu", qir_op="nn.prelu")
def prelu(ctx):
    x, slope = ctx.inputs[:2]
    rank, slope_value = _rank(x), ctx.value_of(slope)
    # Before opset 7 a [C] slope applied per channel of [N, C, ...]; numpy broadcasting
    # would align it with the last dim instead, so give it trailing 1s.
    if ctx.opset < 7 and slope_value is not None and slope_value.ndim == 1 and slope_value.size > 1 \
            and rank is not None and rank > 2:
        slope = ctx.const(slope_value.reshape((-1,) + (1,) * (rank - 2)))
    elif ctx.opset < 7 and slope_value is None and rank is not None and rank > 2 and _rank(slope) == 1:
        raise ctx.fail("a per-channel PRelu slope that is not a constant is not supported before opset 7")
    return ctx.emit("nn.prelu", [x, slope])


# -- softmax family ------------------------------------------------------------------------

def _softmax_family(qir_op: str):
    def convert(ctx):
        x = ctx.inputs[0]
        rank = _rank(x)
        if ctx.opset >= 13:
            axis = int(ctx.attrs.get("axis", -1))
            return ctx.emit(qir_op, [x], {"axis": axis % rank if rank else axis})
        # Before opset 13 the op flattened x to 2-D [prod(:axis), prod(axis:)] and worked on the
        # second dim; on the last axis that is the same as the one-axis op.
        axis = int(ctx.attrs.get("axis", 1))
        if rank is None:
            raise ctx.fail(f"opset {ctx.opset} {ctx.node.op_type} needs the input's rank to be known")
        axis = axis % rank if rank else 0
        shape = _shape(x)
        if axis == rank - 1:
            return ctx.emit(qir_op, [x], {"axis": axis})
        wide = [k for k in range(axis, rank) if shape is None or shape[k] != 1]
        if shape is not None and len(wide) <= 1:
            # Only one dim of the flattened block is not 1 (e.g. [N,1000,1,1] at axis 1): the
            # 2-D op is the one-axis op along that dim, with no reshapes.
            return ctx.emit(qir_op, [x], {"axis": wide[0] if wide else rank - 1})
        if _static(shape):
            flat = [int(np.prod(shape[:axis], dtype=np.int64)), int(np.prod(shape[axis:], dtype=np.int64))]
            x2 = ctx.emit("tensor.reshape", [x, ctx.const_ints(flat)], num_outputs=1)[0]
            y2 = ctx.emit(qir_op, [x2], {"axis": 1}, num_outputs=1)[0]
            return ctx.emit("tensor.reshape", [y2, ctx.const_ints(list(shape))])
        x2 = ctx.emit("tensor.flatten", [x], {"axis": axis}, num_outputs=1)[0]
        y2 = ctx.emit(qir_op, [x2], {"axis": 1}, num_outputs=1)[0]
        dims = ctx.emit("tensor.shape", [x], num_outputs=1)[0]
        return ctx.emit("tensor.reshape", [y2, dims])

    return convert


for _onnx, _qir in (("Softmax", "nn.softmax"), ("LogSoftmax", "nn.log_softmax"), ("Hardmax", "nn.hardmax")):
    converter(_onnx, qir_op=_qir)(_softmax_family(_qir))


# -- convolution and pooling ---------------------------------------------------------------

def _spatial_attrs(ctx, x, kernel: list | None) -> dict:
    """kernel_shape, strides, dilations and pads made explicit; auto_pad resolved to pads when
    the input's spatial dims are static (kept for run time otherwise)."""
    a = ctx.attrs
    shape = _shape(x)
    n = len(kernel) if kernel else (len(shape) - 2 if shape is not None else None)
    out = {}
    auto_pad = a.get("auto_pad", "NOTSET") or "NOTSET"
    if n is None:
        return {k: v for k, v in a.items() if k in ("auto_pad", "dilations", "kernel_shape", "pads", "strides")}
    strides = list(a.get("strides") or [1] * n)
    dilations = list(a.get("dilations") or [1] * n)
    if kernel:
        out["kernel_shape"] = tuple(int(k) for k in kernel)
    out["strides"] = tuple(int(s) for s in strides)
    out["dilations"] = tuple(int(d) for d in dilations)
    if auto_pad == "NOTSET":
        out["auto_pad"] = "NOTSET"
        out["pads"] = tuple(int(p) for p in (a.get("pads") or [0] * (2 * n)))
    elif kernel and shape is not None and _static(shape[2:]):
        out["auto_pad"] = "NOTSET"
        out["pads"] = tuple(auto_pads(auto_pad, shape[2:], kernel, strides, dilations))
    else:
        out["auto_pad"] = auto_pad
        if auto_pad == "VALID":
            out["auto_pad"], out["pads"] = "NOTSET", (0,) * (2 * n)
    return out


def _kernel_of(ctx, w) -> list | None:
    if ctx.attrs.get("kernel_shape"):
        return [int(k) for k in ctx.attrs["kernel_shape"]]
    ws = _shape(w)
    return list(ws[2:]) if _static(ws) else None


@converter("Conv", qir_op="nn.conv")
def conv(ctx):
    x, w = ctx.inputs[:2]
    attrs = _spatial_attrs(ctx, x, _kernel_of(ctx, w))
    attrs["group"] = int(ctx.attrs.get("group", 1))
    return ctx.emit("nn.conv", ctx.inputs, attrs)


@converter("ConvTranspose", qir_op="nn.conv_transpose")
def conv_transpose(ctx):
    x, w = ctx.inputs[:2]
    a = ctx.attrs
    kernel = _kernel_of(ctx, w)
    shape = _shape(x)
    attrs = {"group": int(a.get("group", 1))}
    n = len(kernel) if kernel else (len(shape) - 2 if shape is not None else None)
    if n is None:
        attrs.update({k: v for k, v in a.items() if k != "group"})
        return ctx.emit("nn.conv_transpose", ctx.inputs, attrs)
    strides = [int(s) for s in (a.get("strides") or [1] * n)]
    dilations = [int(d) for d in (a.get("dilations") or [1] * n)]
    output_padding = [int(p) for p in (a.get("output_padding") or [0] * n)]
    auto_pad = a.get("auto_pad", "NOTSET") or "NOTSET"
    output_shape = [int(s) for s in a.get("output_shape", ())]
    attrs.update(strides=tuple(strides), dilations=tuple(dilations), output_padding=tuple(output_padding))
    if kernel:
        attrs["kernel_shape"] = tuple(kernel)
    pads = None
    if kernel and shape is not None and _static(shape[2:]):
        begin, end, _ = conv_transpose_geometry(shape[2:], kernel, strides, dilations, a.get("pads"),
                                                auto_pad, output_padding, output_shape)
        if min(begin + end) >= 0:  # a larger output_shape than natural stays as it is
            pads = begin + end
    if pads is not None:
        attrs.update(auto_pad="NOTSET", pads=tuple(pads))
    else:
        attrs["auto_pad"] = auto_pad
        if a.get("pads"):
            attrs["pads"] = tuple(int(p) for p in a["pads"])
        if output_shape:
            attrs["output_shape"] = tuple(output_shape)
    return ctx.emit("nn.conv_transpose", ctx.inputs, attrs)


@converter("MaxPool", qir_op="nn.max_pool")
def max_pool(ctx):
    a = ctx.attrs
    attrs = _spatial_attrs(ctx, ctx.inputs[0], [int(k) for k in a["kernel_shape"]])
    attrs["ceil_mode"] = int(a.get("ceil_mode", 0))
    attrs["storage_order"] = int(a.get("storage_order", 0))
    return ctx.emit("nn.max_pool", ctx.inputs, attrs)


@converter("AveragePool", qir_op="nn.average_pool")
def average_pool(ctx):
    a = ctx.attrs
    attrs = _spatial_attrs(ctx, ctx.inputs[0], [int(k) for k in a["kernel_shape"]])
    attrs["ceil_mode"] = int(a.get("ceil_mode", 0))
    attrs["count_include_pad"] = int(a.get("count_include_pad", 0))
    return ctx.emit("nn.average_pool", ctx.inputs, attrs)


@converter("LpPool", qir_op="nn.lp_pool")
def lp_pool(ctx):
    a = ctx.attrs
    attrs = _spatial_attrs(ctx, ctx.inputs[0], [int(k) for k in a["kernel_shape"]])
    attrs["ceil_mode"] = int(a.get("ceil_mode", 0))
    attrs["p"] = int(round(float(a.get("p", 2))))  # a float attribute before opset 2
    return ctx.emit("nn.lp_pool", ctx.inputs, attrs)


simple("GlobalAveragePool", "nn.global_average_pool")
simple("GlobalMaxPool", "nn.global_max_pool")


@converter("GlobalLpPool", qir_op="nn.global_lp_pool")
def global_lp_pool(ctx):
    return ctx.emit("nn.global_lp_pool", ctx.inputs, {"p": int(round(float(ctx.attrs.get("p", 2))))})


# -- normalization -------------------------------------------------------------------------

@converter("BatchNormalization", qir_op="nn.batch_normalization")
def batch_normalization(ctx):
    a = ctx.attrs
    if ctx.opset < 9 and int(a.get("spatial", 1)) == 0 and any(
            (_rank(v) or 1) > 1 for v in ctx.inputs[1:5]):
        raise ctx.fail("BatchNormalization with spatial=0 (per-activation statistics) is not supported")
    attrs = {"epsilon": float(a.get("epsilon", 1e-5)), "momentum": float(a.get("momentum", 0.9))}
    training = ctx.opset >= 14 and int(a.get("training_mode", 0)) == 1
    attrs["training_mode"] = int(training)
    n_out = min(ctx.num_outputs, 3) if training else 1
    outs = ctx.emit("nn.batch_normalization", ctx.inputs, attrs, num_outputs=n_out)
    return outs + [None] * (ctx.num_outputs - len(outs))


simple("InstanceNormalization", "nn.instance_normalization", drop=_LEGACY)
simple("LRN", "nn.lrn")


def _axis_op(qir_op: str, default: int):
    """A converter that makes the ``axis`` attribute explicit and non-negative (rank known)."""

    def convert(ctx):
        attrs = dict(ctx.attrs)
        attrs["axis"] = _axis_attr(ctx, ctx.inputs[0], default)
        return ctx.emit(qir_op, ctx.inputs, attrs)

    return convert


converter("LpNormalization", qir_op="nn.lp_normalization")(_axis_op("nn.lp_normalization", -1))
converter("RMSNormalization", qir_op="nn.rms_normalization")(_axis_op("nn.rms_normalization", -1))


@converter("MeanVarianceNormalization", qir_op="nn.mean_variance_normalization")
def mean_variance_normalization(ctx):
    axes = [int(a) for a in ctx.attrs.get("axes", (0, 2, 3))]
    rank = _rank(ctx.inputs[0])
    if rank:
        axes = [a % rank for a in axes]
    return ctx.emit("nn.mean_variance_normalization", ctx.inputs, {"axes": tuple(axes)})


def _axis_attr(ctx, rank_of, default: int = -1) -> int:
    axis = int(ctx.attrs.get("axis", default))
    rank = _rank(rank_of)
    return axis % rank if rank else axis


@converter("LayerNormalization", qir_op="nn.layer_normalization")
def layer_normalization(ctx):
    a = ctx.attrs
    attrs = {"axis": _axis_attr(ctx, ctx.inputs[0]), "epsilon": float(a.get("epsilon", 1e-5)),
             "stash_type": int(a.get("stash_type", 1))}
    return ctx.emit("nn.layer_normalization", ctx.inputs, attrs, num_outputs=min(ctx.num_outputs, 3))


@converter("GroupNormalization", qir_op="nn.group_normalization")
def group_normalization(ctx):
    a = ctx.attrs
    x, scale, bias = ctx.inputs[:3]
    groups = int(a["num_groups"])
    attrs = {"epsilon": float(a.get("epsilon", 1e-5)), "num_groups": groups,
             "stash_type": int(a.get("stash_type", 1))}
    if ctx.opset < 21:
        # Opset 18 had one scale and bias per group; opset 21 has one per channel.
        shape = _shape(x)
        values = [ctx.value_of(scale), ctx.value_of(bias)]
        if shape is None or not isinstance(shape[1], int) or any(v is None for v in values):
            raise ctx.fail("opset-18 GroupNormalization needs constant scale/bias and a known channel count")
        reps = shape[1] // groups
        scale, bias = (ctx.const(np.repeat(v, reps)) for v in values)
    return ctx.emit("nn.group_normalization", [x, scale, bias], attrs)


# -- dropout -------------------------------------------------------------------------------

@converter("Dropout", qir_op="nn.dropout")
def dropout(ctx):
    if ctx.opset >= 12:
        attrs = {"seed": int(ctx.attrs["seed"])} if "seed" in ctx.attrs else {}
        return ctx.emit("nn.dropout", ctx.inputs, attrs, num_outputs=min(ctx.num_outputs, 2))
    # Before opset 12 the ratio was an attribute and is_test (< 7) chose the mode; qir runs
    # inference, where Dropout is the identity. Before opset 10 the mask had x's type.
    ratio = ctx.const(np.asarray(float(ctx.attrs.get("ratio", 0.5)), dtype=np.float32))
    if ctx.num_outputs > 1 and ctx.opset < 10:
        out, mask = ctx.emit("nn.dropout", [ctx.inputs[0], ratio], num_outputs=2)
        x_type = ctx.inputs[0].type
        return [out, ctx.emit("elementwise.cast", [mask], {"to": x_type.dtype}, num_outputs=1)[0]]
    return ctx.emit("nn.dropout", [ctx.inputs[0], ratio], num_outputs=min(ctx.num_outputs, 2))


# -- recurrent -----------------------------------------------------------------------------

def _recurrent(qir_op: str, extra: tuple[str, ...]):
    def convert(ctx):
        a = ctx.attrs
        attrs = {k: a[k] for k in ("activation_alpha", "activation_beta", "activations", "clip",
                                   "direction", "hidden_size", "layout") + extra if k in a}
        if "hidden_size" not in attrs:  # optional in ONNX: W is [num_dir, gates·H, I]
            ws = _shape(ctx.inputs[1])
            if ws is None or not isinstance(ws[1], int):
                raise ctx.fail("hidden_size is not given and W's shape is unknown")
            attrs["hidden_size"] = ws[1] // {"nn.rnn": 1, "nn.gru": 3, "nn.lstm": 4}[qir_op]
        if "activations" in attrs:
            attrs["activations"] = tuple(attrs["activations"])
        if qir_op == "nn.gru" and ctx.opset < 3:
            attrs.pop("linear_before_reset", None)  # added in opset 3
        # output_sequence (opset 1) only said whether Y was wanted: the node's outputs say that.
        return ctx.emit(qir_op, ctx.inputs, attrs)

    return convert


converter("RNN", qir_op="nn.rnn")(_recurrent("nn.rnn", ()))
converter("GRU", qir_op="nn.gru")(_recurrent("nn.gru", ("linear_before_reset",)))
converter("LSTM", qir_op="nn.lstm")(_recurrent("nn.lstm", ("input_forget",)))


# -- unpooling, col2im, region pooling, rotary embedding -------------------------------------

simple("MaxUnpool", "nn.max_unpool")
simple("Col2Im", "nn.col2im")
simple("MaxRoiPool", "nn.max_roi_pool")
simple("RotaryEmbedding", "nn.rotary_embedding")


@converter("RoiAlign", qir_op="nn.roi_align")
def roi_align(ctx):
    attrs = dict(ctx.attrs)
    if ctx.opset < 16:
        # coordinate_transformation_mode arrived in opset 16; before it the op used what is
        # now called "output_half_pixel" (no half-pixel shift).
        attrs["coordinate_transformation_mode"] = "output_half_pixel"
    return ctx.emit("nn.roi_align", ctx.inputs, attrs)


@converter("Attention", qir_op="nn.attention", since_version=23)
def attention(ctx):
    attrs = dict(ctx.attrs)
    if "softmax_precision" in attrs:
        attrs["softmax_precision"] = ctx.dtype(int(attrs["softmax_precision"]))
    return ctx.emit("nn.attention", ctx.inputs, attrs)


@converter("DeformConv", qir_op="nn.deform_conv", since_version=19)
def deform_conv(ctx):
    attrs = dict(ctx.attrs)
    kernel = _kernel_of(ctx, ctx.inputs[1])
    if kernel:
        n = len(kernel)
        attrs["kernel_shape"] = tuple(kernel)
        attrs.setdefault("strides", (1,) * n)
        attrs.setdefault("dilations", (1,) * n)
        attrs.setdefault("pads", (0,) * (2 * n))
    return ctx.emit("nn.deform_conv", ctx.inputs, attrs)


simple("CausalConvWithState", "nn.causal_conv_with_state", since_version=27)
simple("LinearAttention", "nn.linear_attention", since_version=27)


@converter("FlexAttention", qir_op="nn.flex_attention", domain="ai.onnx.preview")
def flex_attention(ctx):
    attrs = {k: v for k, v in ctx.attrs.items() if k in ("scale",)}
    for name in ("score_mod", "prob_mod"):
        if name in ctx.attrs:
            attrs[name] = ctx.subgraph(name)
    if "softmax_precision" in ctx.attrs:
        attrs["softmax_precision"] = ctx.dtype(int(ctx.attrs["softmax_precision"]))
    return ctx.emit("nn.flex_attention", ctx.inputs, attrs)
