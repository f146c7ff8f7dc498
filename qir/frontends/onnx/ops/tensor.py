"""ONNX → qir converters for the tensor family (shape manipulation and data movement).

qir tensor ops have the newest ONNX semantics. Older opset forms are upgraded here: attributes
that later became inputs (Reshape's shape, Squeeze's axes, Slice's starts/ends, Pad's pads...)
become int64 constant inputs, and axis attributes are made non-negative where the rank is known.
"""

from __future__ import annotations

import numpy as np

from qir.frontends.onnx.registry import converter, simple
from qir.ir.types import TensorType

simple("Identity", "tensor.identity")
simple("Size", "tensor.size")
simple("ConstantOfShape", "tensor.constant_of_shape")
simple("Range", "tensor.range")
simple("NonZero", "tensor.non_zero")
simple("Expand", "tensor.expand")
simple("ReverseSequence", "tensor.reverse_sequence")
simple("Trilu", "tensor.trilu")


# -- helpers -------------------------------------------------------------------------------

def _rank(ctx, i: int = 0) -> int | None:
    value = ctx.inputs[i] if i < len(ctx.inputs) else None
    t = None if value is None else value.type
    return t.rank if isinstance(t, TensorType) else None


def _norm_axis(ctx, axis: int, rank_offset: int = 0) -> int:
    """``axis`` made non-negative when input 0's rank is known (``rank_offset`` for outputs
    of higher rank, e.g. OneHot's new axis)."""
    rank = _rank(ctx)
    if rank is None or axis >= 0:
        return axis
    rank += rank_offset
    return axis + rank if axis >= -rank else axis


def _norm_axes(ctx, axes, rank_offset: int = 0):
    return None if axes is None else tuple(_norm_axis(ctx, int(a), rank_offset) for a in axes)


def _axes_input(ctx, i: int, rank_offset: int = 0):
    """Input ``i`` (axes), made non-negative when it is a constant and the rank is known."""
    value = ctx.inputs[i] if i < len(ctx.inputs) else None
    const = ctx.value_of(value)
    if const is None or _rank(ctx) is None or not np.any(np.asarray(const) < 0):
        return value
    return ctx.const_ints(_norm_axes(ctx, np.asarray(const).reshape(-1), rank_offset))


def _input(ctx, i: int):
    return ctx.inputs[i] if i < len(ctx.inputs) else None


def _with_axis(ctx, attrs: dict, key: str = "axis", default=None, rank_offset: int = 0) -> dict:
    attrs = dict(attrs)
    if key in attrs or default is not None:
        attrs[key] = _norm_axis(ctx, int(attrs.get(key, default)), rank_offset)
    return attrs


def _axis_op(op_type: str, qir_op: str, default: int | None = 0, since_version: int = 1) -> None:
    """A one-to-one mapping whose ``axis`` attribute is made explicit and non-negative."""

    def convert(ctx):
        return ctx.emit(qir_op, ctx.inputs, _with_axis(ctx, ctx.attrs, default=default))

    converter(op_type, qir_op=qir_op, since_version=since_version)(convert)


for _op_type, _qir_op in [("Gather", "tensor.gather"), ("GatherElements", "tensor.gather_elements"),
                          ("ScatterElements", "tensor.scatter_elements"), ("Flatten", "tensor.flatten")]:
    _axis_op(_op_type, _qir_op, default=1 if _op_type == "Flatten" else 0)


# -- reshape family ------------------------------------------------------------------------

@converter("Reshape", qir_op="tensor.reshape")
def reshape(ctx):
    # Reshape-1 took the shape as an attribute (and a consumed_inputs legacy attribute).
    shape = ctx.const_ints(ctx.attrs.get("shape")) if ctx.opset < 5 else ctx.inputs[1]
    return ctx.emit("tensor.reshape", [ctx.inputs[0], shape], {"allowzero": ctx.attrs.get("allowzero", 0)})


@converter("Transpose", qir_op="tensor.transpose")
def transpose(ctx):
    perm = ctx.attrs.get("perm")
    rank = _rank(ctx)
    if perm is None and rank is not None:
        perm = tuple(reversed(range(rank)))
    return ctx.emit("tensor.transpose", ctx.inputs, {} if perm is None else {"perm": tuple(perm)})


def _squeeze_like(qir_op: str, rank_offset):
    def convert(ctx):
        if ctx.opset < 13:
            axes = ctx.attrs.get("axes")
            offset = rank_offset(len(axes)) if axes is not None else 0
            axes = ctx.const_ints(_norm_axes(ctx, axes, offset))
        else:
            const = ctx.value_of(_input(ctx, 1))
            offset = 0 if const is None else rank_offset(np.size(const))
            axes = _axes_input(ctx, 1, offset)
        return ctx.emit(qir_op, [ctx.inputs[0]] + ([axes] if axes is not None else []))

    return convert


converter("Squeeze", qir_op="tensor.squeeze")(_squeeze_like("tensor.squeeze", lambda n: 0))
converter("Unsqueeze", qir_op="tensor.unsqueeze")(_squeeze_like("tensor.unsqueeze", lambda n: n))


@converter("Concat", qir_op="tensor.concat")
def concat(ctx):
    # Concat-1 defaulted axis to 1; from opset 4 on it is required.
    default = 1 if ctx.opset < 4 else None
    return ctx.emit("tensor.concat", ctx.inputs, _with_axis(ctx, ctx.attrs, default=default))


@converter("Split", qir_op="tensor.split")
def split(ctx):
    attrs = _with_axis(ctx, ctx.attrs, default=0)
    split_sizes = _input(ctx, 1)
    if ctx.opset < 13 and "split" in attrs:
        split_sizes = ctx.const_ints(attrs.pop("split"))
    attrs.pop("split", None)
    inputs = [ctx.inputs[0]] + ([split_sizes] if split_sizes is not None else [])
    if split_sizes is None and attrs.get("num_outputs") is None:
        # Before opset 18, no split means equal parts, one per output.
        attrs["num_outputs"] = ctx.num_outputs
    return ctx.emit("tensor.split", inputs, attrs)


@converter("Slice", qir_op="tensor.slice")
def slice_(ctx):
    if ctx.opset < 10:
        attrs = ctx.attrs
        inputs = [ctx.inputs[0], ctx.const_ints(attrs["starts"]), ctx.const_ints(attrs["ends"])]
        if "axes" in attrs:
            inputs.append(ctx.const_ints(_norm_axes(ctx, attrs["axes"])))
        return ctx.emit("tensor.slice", inputs)
    inputs = list(ctx.inputs)
    if len(inputs) > 3 and inputs[3] is not None:
        inputs[3] = _axes_input(ctx, 3)
    return ctx.emit("tensor.slice", inputs)


# -- gather / scatter ----------------------------------------------------------------------

simple("GatherND", "tensor.gather_nd")
simple("ScatterND", "tensor.scatter_nd")


@converter("Scatter", qir_op=None)
def scatter(ctx):
    # Scatter (opsets 9-10) is ScatterElements without reduction.
    return ctx.emit("tensor.scatter_elements", ctx.inputs, _with_axis(ctx, ctx.attrs, default=0))


# -- tile, pad -----------------------------------------------------------------------------

@converter("Tile", qir_op="tensor.tile")
def tile(ctx):
    if ctx.opset >= 6:
        return ctx.emit("tensor.tile", ctx.inputs)
    # Tile-1: a scalar count of tiles along a scalar axis.
    tiles, axis, rank = ctx.value_of(ctx.inputs[1]), ctx.value_of(ctx.inputs[2]), _rank(ctx)
    if tiles is None or axis is None or rank is None:
        raise ctx.fail("Tile-1 needs constant tiles and axis and an input of known rank")
    repeats = [1] * rank
    repeats[int(np.asarray(axis).reshape(-1)[0]) % rank] = int(np.asarray(tiles).reshape(-1)[0])
    return ctx.emit("tensor.tile", [ctx.inputs[0], ctx.const_ints(repeats)])


@converter("Pad", qir_op="tensor.pad")
def pad(ctx):
    mode = ctx.attrs.get("mode", "constant")
    if ctx.opset >= 11:
        inputs = list(ctx.inputs)
        if len(inputs) > 3 and inputs[3] is not None:
            inputs[3] = _axes_input(ctx, 3)
        return ctx.emit("tensor.pad", inputs, {"mode": mode})
    # Before opset 11 pads (Pad-1: paddings) and value were attributes.
    pads = ctx.attrs.get("pads", ctx.attrs.get("paddings"))
    x = ctx.inputs[0]
    value = ctx.const(np.array(ctx.attrs.get("value", 0.0)).astype(x.type.dtype.numpy)) \
        if isinstance(x.type, TensorType) else None
    inputs = [x, ctx.const_ints(pads)] + ([value] if value is not None else [])
    return ctx.emit("tensor.pad", inputs, {"mode": mode})


# -- shape, one_hot, compress, unique ------------------------------------------------------

@converter("Shape", qir_op="tensor.shape")
def shape(ctx):
    attrs = {k: v for k, v in ctx.attrs.items() if k in ("start", "end")}
    return ctx.emit("tensor.shape", ctx.inputs, attrs)


@converter("OneHot", qir_op="tensor.one_hot")
def one_hot(ctx):
    return ctx.emit("tensor.one_hot", ctx.inputs, _with_axis(ctx, ctx.attrs, default=-1, rank_offset=1))


@converter("Compress", qir_op="tensor.compress")
def compress(ctx):
    return ctx.emit("tensor.compress", ctx.inputs, _with_axis(ctx, ctx.attrs))


@converter("Unique", qir_op="tensor.unique")
def unique(ctx):
    return ctx.emit("tensor.unique", ctx.inputs, _with_axis(ctx, ctx.attrs))


# -- depth_to_space, space_to_depth, eye_like, center_crop_pad -----------------------------

@converter("DepthToSpace", qir_op="tensor.depth_to_space")
def depth_to_space(ctx):
    # Before opset 11 only the DCR order existed.
    return ctx.emit("tensor.depth_to_space", ctx.inputs,
                    {"blocksize": ctx.attrs["blocksize"], "mode": ctx.attrs.get("mode", "DCR")})


simple("SpaceToDepth", "tensor.space_to_depth")


@converter("EyeLike", qir_op="tensor.eye_like")
def eye_like(ctx):
    attrs = dict(ctx.attrs)
    if "dtype" in attrs:
        attrs["dtype"] = ctx.dtype(attrs["dtype"])
    return ctx.emit("tensor.eye_like", ctx.inputs, attrs)


@converter("CenterCropPad", qir_op="tensor.center_crop_pad")
def center_crop_pad(ctx):
    attrs = dict(ctx.attrs)
    if "axes" in attrs:
        attrs["axes"] = _norm_axes(ctx, attrs["axes"])
    return ctx.emit("tensor.center_crop_pad", ctx.inputs, attrs)


# -- resize / upsample ---------------------------------------------------------------------

def _resize_attrs(ctx) -> dict:
    attrs = dict(ctx.attrs)
    if "axes" in attrs:
        attrs["axes"] = _norm_axes(ctx, attrs["axes"])
    return attrs


@converter("Resize", qir_op="tensor.resize", since_version=10)
def resize_10(ctx):
    # Resize-10: (X, scales), sampling the input asymmetrically; nearest takes the floor.
    mode = ctx.attrs.get("mode", "nearest")
    return ctx.emit("tensor.resize", [ctx.inputs[0], None, ctx.inputs[1]],
                    {"mode": mode, "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"})


@converter("Resize", qir_op="tensor.resize", since_version=11)
def resize(ctx):
    return ctx.emit("tensor.resize", ctx.inputs, _resize_attrs(ctx))


def _upsample_mode(ctx) -> str:
    mode = ctx.attrs.get("mode", "nearest")
    return {"bilinear": "linear"}.get(mode, mode)


def _upsample(ctx, scales):
    return ctx.emit("tensor.resize", [ctx.inputs[0], None, scales],
                    {"mode": _upsample_mode(ctx), "coordinate_transformation_mode": "asymmetric",
                     "nearest_mode": "floor"})


@converter("Upsample", qir_op=None)
def upsample_1(ctx):
    # Upsample-1: NCHW with height_scale and width_scale attributes.
    scales = [1.0, 1.0, ctx.attrs.get("height_scale", 1.0), ctx.attrs.get("width_scale", 1.0)]
    return _upsample(ctx, ctx.const(np.array(scales, np.float32)))


@converter("Upsample", qir_op=None, since_version=7)
def upsample_7(ctx):
    return _upsample(ctx, ctx.const(np.array(ctx.attrs["scales"], np.float32)))


@converter("Upsample", qir_op=None, since_version=9)
def upsample_9(ctx):
    return _upsample(ctx, ctx.inputs[1])


# -- grid_sample, affine_grid --------------------------------------------------------------

@converter("GridSample", qir_op="tensor.grid_sample", since_version=16)
def grid_sample(ctx):
    # GridSample-16 spelled the modes bilinear and bicubic.
    attrs = dict(ctx.attrs)
    mode = attrs.get("mode", "bilinear" if ctx.opset < 20 else "linear")
    attrs["mode"] = {"bilinear": "linear", "bicubic": "cubic"}.get(mode, mode)
    return ctx.emit("tensor.grid_sample", ctx.inputs, attrs)


simple("AffineGrid", "tensor.affine_grid", since_version=20)


# -- tensor_scatter ------------------------------------------------------------------------

@converter("TensorScatter", qir_op="tensor.tensor_scatter", since_version=24)
def tensor_scatter(ctx):
    # TensorScatter-24 is the only version; its axis (default -2) is made explicit and non-negative.
    return ctx.emit("tensor.tensor_scatter", ctx.inputs, _with_axis(ctx, ctx.attrs, default=-2))
