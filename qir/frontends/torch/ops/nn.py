"""Neural-network ATen ops: convolution, normalization, pooling, softmax, attention, embedding."""

from __future__ import annotations

import numpy as np

from qir.frontends.torch.registry import aten


def _ints(v, n: int) -> tuple[int, ...]:
    """A size argument as n ints (torch lets one int stand for every spatial dim)."""
    if v is None:
        return ()
    v = [int(x) for x in (v if isinstance(v, (list, tuple)) else [v])]
    return tuple(v * n if len(v) == 1 and n > 1 else v)


def _spatial(ctx, arg, n: int) -> list[int]:
    dims = ctx.meta_shape(arg)[-n:]
    if not all(isinstance(d, int) for d in dims):
        raise ctx.fail("dynamic spatial dims are not supported here")
    return dims


@aten("convolution")
def convolution(ctx):
    a = ctx.args
    n = ctx.rank(a["weight"]) - 2
    kernel = _spatial(ctx, a["weight"], n)
    pads = _ints(a["padding"], n) or (0,) * n
    attrs = {"kernel_shape": tuple(kernel), "strides": _ints(a["stride"], n) or (1,) * n,
             "dilations": _ints(a["dilation"], n) or (1,) * n, "pads": pads + pads,
             "group": int(a["groups"])}
    inputs = [ctx.value(a["input"]), ctx.value(a["weight"])]
    if a["bias"] is not None:
        inputs.append(ctx.value(a["bias"]))
    if a["transposed"]:
        # torch's transposed weight [C_in, C_out/groups, k...] is ONNX ConvTranspose's layout.
        attrs["output_padding"] = _ints(a["output_padding"], n) or (0,) * n
        return ctx.emit("nn.conv_transpose", inputs, attrs)
    return ctx.emit("nn.conv", inputs, attrs)


def _channel_param(ctx, arg, fill: float, channels_of):
    if arg is not None:
        return ctx.value(arg)
    size = ctx.meta_shape(channels_of)[1]
    if not isinstance(size, int):
        raise ctx.fail("a dynamic channel count is not supported")
    return ctx.const(np.full((size,), fill, dtype=ctx.out_dtype.numpy))


def _batch_norm(ctx, training: bool):
    a = ctx.args
    if training:
        raise ctx.fail("batch norm in training mode (batch statistics) is not supported; export the "
                       "model in eval mode")
    x = a["input"]
    return ctx.emit("nn.batch_normalization",
                    [ctx.value(x), _channel_param(ctx, a["weight"], 1.0, x), _channel_param(ctx, a["bias"], 0.0, x),
                     ctx.value(a["running_mean"]), ctx.value(a["running_var"])],
                    {"epsilon": float(a["eps"]), "momentum": float(a["momentum"]) if a["momentum"] else 0.9})


@aten("_native_batch_norm_legit_no_training")
def native_batch_norm_no_training(ctx):
    return [_batch_norm(ctx, False), None, None]


@aten("native_batch_norm", "_native_batch_norm_legit_functional")
def native_batch_norm(ctx):
    return [_batch_norm(ctx, bool(ctx.args.get("training"))), None, None] + \
        ([None, None] if ctx.op.endswith("functional") else [])


@aten("batch_norm")
def batch_norm(ctx):
    return _batch_norm(ctx, bool(ctx.args.get("training")))


def _layer_norm(ctx):
    a = ctx.args
    shape = [int(d) for d in a["normalized_shape"]]
    rank = ctx.rank(a["input"])
    dt = ctx.out_dtype
    scale = ctx.value(a["weight"]) if a["weight"] is not None else ctx.const(np.ones(shape, dtype=dt.numpy))
    inputs = [ctx.value(a["input"]), scale] + ([ctx.value(a["bias"])] if a["bias"] is not None else [])
    return ctx.emit("nn.layer_normalization", inputs, {"axis": rank - len(shape), "epsilon": float(a["eps"])})


@aten("native_layer_norm")
def native_layer_norm(ctx):
    return [_layer_norm(ctx), None, None]


@aten("layer_norm")
def layer_norm(ctx):
    return _layer_norm(ctx)


@aten("rms_norm")
def rms_norm(ctx):
    """x / sqrt(mean(x²) + eps) · weight over the trailing normalized dims; torch's default eps
    is the dtype's machine epsilon."""
    a = ctx.args
    shape = [int(d) for d in a["normalized_shape"]]
    dt = ctx.out_dtype
    scale = ctx.value(a["weight"]) if a.get("weight") is not None else ctx.const(np.ones(shape, dtype=dt.numpy))
    eps = float(np.finfo(dt.numpy).eps) if a.get("eps") is None else float(a["eps"])
    return ctx.emit("nn.rms_normalization", [ctx.value(a["input"]), scale],
                    {"axis": ctx.rank(a["input"]) - len(shape), "epsilon": eps})


@aten("native_group_norm", "group_norm")
def group_norm(ctx):
    a = ctx.args
    x = a["input"]
    groups = int(a["group"] if "group" in a else a["num_groups"])
    y = ctx.emit("nn.group_normalization",
                 [ctx.value(x), _channel_param(ctx, a["weight"], 1.0, x), _channel_param(ctx, a["bias"], 0.0, x)],
                 {"epsilon": float(a["eps"]), "num_groups": groups})
    return [y, None, None] if ctx.op.endswith("native_group_norm") else y


# -- pooling ---------------------------------------------------------------------------------

def _pool_attrs(ctx, n: int) -> dict:
    a = ctx.args
    kernel = _ints(a["kernel_size"], n)
    pads = _ints(a.get("padding"), n) or (0,) * n
    attrs = {"kernel_shape": kernel, "strides": _ints(a.get("stride"), n) or kernel, "pads": pads + pads,
             "ceil_mode": int(bool(a.get("ceil_mode")))}
    if "dilation" in a:
        attrs["dilations"] = _ints(a["dilation"], n) or (1,) * n
    return attrs


def _pool_rank(ctx, n: int) -> int:
    """The spatial rank of an ``n``-d pool (its input must have a batch dim)."""
    if ctx.rank(ctx.args["self"]) != n + 2:
        raise ctx.fail("pooling of an unbatched input is not supported; add a batch dim")
    return n


@aten("max_pool1d", "max_pool2d", "max_pool3d")
def max_pool(ctx):
    n = _pool_rank(ctx, int(ctx.op[-2]))
    return ctx.emit("nn.max_pool", [ctx.value(ctx.args["self"])], _pool_attrs(ctx, n))


@aten("max_pool2d_with_indices", "max_pool3d_with_indices")
def max_pool_with_indices(ctx):
    """Values only; a use of the indices output is reported by getitem."""
    n = _pool_rank(ctx, int(ctx.op.split("_with")[0][-2]))
    return [ctx.emit("nn.max_pool", [ctx.value(ctx.args["self"])], _pool_attrs(ctx, n)), None]


@aten("avg_pool1d", "avg_pool2d", "avg_pool3d")
def avg_pool(ctx):
    if ctx.args.get("divisor_override"):
        raise ctx.fail("avg_pool with divisor_override is not supported")
    n = _pool_rank(ctx, int(ctx.op[-2]))
    attrs = _pool_attrs(ctx, n)
    attrs["count_include_pad"] = int(bool(ctx.args.get("count_include_pad", True)))
    return ctx.emit("nn.average_pool", [ctx.value(ctx.args["self"])], attrs)


def _adaptive(ctx, global_op: str, pool_op: str):
    """Adaptive pooling as global pooling (output 1) or a plain pool (input a multiple of output)."""
    n = ctx.rank(ctx.args["self"]) - 2
    in_sp = _spatial(ctx, ctx.args["self"], n)
    out_sp = [int(o) if o is not None else i for o, i in zip(_ints(ctx.args["output_size"], n), in_sp)]
    x = ctx.value(ctx.args["self"])
    if all(o == 1 for o in out_sp):
        return ctx.emit(global_op, [x])
    if any(i % o for i, o in zip(in_sp, out_sp)):
        raise ctx.fail(f"adaptive pooling from {in_sp} to {out_sp} (not a whole multiple) is not supported")
    kernel = tuple(i // o for i, o in zip(in_sp, out_sp))
    return ctx.emit(pool_op, [x], {"kernel_shape": kernel, "strides": kernel, "pads": (0,) * (2 * n)})


@aten("adaptive_avg_pool1d", "adaptive_avg_pool2d", "_adaptive_avg_pool2d", "adaptive_avg_pool3d",
      "_adaptive_avg_pool3d")
def adaptive_avg_pool(ctx):
    return _adaptive(ctx, "nn.global_average_pool", "nn.average_pool")


@aten("adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d")
def adaptive_max_pool(ctx):
    return [_adaptive(ctx, "nn.global_max_pool", "nn.max_pool"), None]


# -- softmax, attention, embedding ---------------------------------------------------------

def _softmax(qir_op: str):
    def convert(ctx):
        rank = ctx.rank(ctx.args["self"])
        x = ctx.value(ctx.args["self"], ctx.out_dtype)
        return ctx.emit(qir_op, [x], {"axis": ctx.axis(ctx.args["dim"], max(rank, 1))})
    return convert


# _safe_softmax gives 0 for rows that are all −inf (torch's masked attention); nn.softmax NaN.
aten("softmax", "_softmax", "_safe_softmax")(_softmax("nn.softmax"))
aten("log_softmax", "_log_softmax")(_softmax("nn.log_softmax"))


@aten("scaled_dot_product_attention")
def scaled_dot_product_attention(ctx):
    """nn.attention (ONNX Attention-23 semantics, 4-D [B, heads, S, D]; a causal mask aligned
    top-left as torch's when there is no KV cache)."""
    a = ctx.args
    if a.get("dropout_p"):
        raise ctx.fail("attention dropout is not supported; export the model in eval mode")
    rank = ctx.rank(a["query"])
    if rank not in (3, 4):
        raise ctx.fail(f"attention on rank-{rank} inputs is not supported (3 or 4)")
    q, k, v = (ctx.value(a[n]) for n in ("query", "key", "value"))
    mask = None if a.get("attn_mask") is None else ctx.value(a["attn_mask"])
    one = ctx.ints([1])
    if rank == 3:  # one head: [B, S, E] → [B, 1, S, E]
        q, k, v = (ctx.emit("tensor.unsqueeze", [t, one]) for t in (q, k, v))
        if mask is not None and ctx.rank(a["attn_mask"]) == 3:
            mask = ctx.emit("tensor.unsqueeze", [mask, one])
    attrs = {"is_causal": int(bool(a.get("is_causal")))}
    if a.get("scale") is not None:
        attrs["scale"] = float(a["scale"])
    y = ctx.emit("nn.attention", [q, k, v, mask], attrs)
    return ctx.emit("tensor.squeeze", [y, one]) if rank == 3 else y


@aten("embedding")
def embedding(ctx):
    return ctx.emit("tensor.gather", [ctx.value(ctx.args["weight"]), ctx.value(ctx.args["indices"])], {"axis": 0})


# -- resampling ------------------------------------------------------------------------------

def _upsample(ctx, mode: str, coordinates: str):
    """Resize to torch's output size along the spatial axes (sizes, so that the source index
    is dst·in/out as torch computes it)."""
    x_arg = ctx.args.get("input", ctx.args.get("self"))
    rank = ctx.rank(x_arg)
    out = ctx.out_shape[2:]
    if not all(isinstance(d, int) for d in out):
        raise ctx.fail("resizing to a dynamic size is not supported")
    attrs = {"mode": mode, "coordinate_transformation_mode": coordinates, "axes": tuple(range(2, rank))}
    if mode == "nearest":
        attrs["nearest_mode"] = "floor"
    return ctx.emit("tensor.resize", [ctx.value(x_arg), None, None, ctx.ints(out)], attrs)


@aten("upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d")
def upsample_nearest(ctx):
    return _upsample(ctx, "nearest", "asymmetric")


@aten("upsample_linear1d", "upsample_bilinear2d", "upsample_trilinear3d")
def upsample_linear(ctx):
    align = bool(ctx.args.get("align_corners"))
    return _upsample(ctx, "linear", "align_corners" if align else "pytorch_half_pixel")


@aten("pixel_shuffle")
def pixel_shuffle(ctx):
    return ctx.emit("tensor.depth_to_space", [ctx.value(ctx.args["self"])],
                    {"blocksize": int(ctx.args["upscale_factor"]), "mode": "CRD"})


@aten("pixel_unshuffle")
def pixel_unshuffle(ctx):
    return ctx.emit("tensor.space_to_depth", [ctx.value(ctx.args["self"])],
                    {"blocksize": int(ctx.args["downscale_factor"]), "mode": "CRD"})
