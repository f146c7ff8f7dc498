"""The loss op family: NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss.

Both ops follow the newest ONNX semantics (NegativeLogLikelihoodLoss-22,
SoftmaxCrossEntropyLoss-13): scores/log-probabilities of shape (N, C, d1, ..., dk), integer
class labels of shape (N, d1, ..., dk), an optional per-class weight of shape (C,), an optional
``ignore_index`` whose samples contribute nothing, and a ``reduction`` of "none" (the per-sample
loss), "sum" or "mean". A weighted mean divides by the total weight of the samples counted, so
ignored samples drop out of the denominator too (as in PyTorch and ONNX's function bodies).
"""

from __future__ import annotations

import numpy as np

from qir.ir.opdef import Attr, InferContext, op
from qir.ir.types import TensorType, Type

#: The reductions both loss ops accept.
REDUCTIONS = ("none", "sum", "mean")

_LOSS_ATTRS = {
    "reduction": Attr("str", "mean", "none | sum | mean"),
    "ignore_index": Attr("int", None, "label value whose samples are ignored; None: no such label"),
}


# -- shared helpers --------------------------------------------------------------------------

def _verify_loss(ctx: InferContext) -> None:
    """Reduction names a known mode; scores have rank >= 2 and labels one rank less."""
    reduction = ctx.attrs["reduction"]
    if reduction not in REDUCTIONS:
        raise ctx.fail(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    scores, labels = ctx.shape(0), ctx.shape(1)
    if scores is not None and len(scores) < 2:
        raise ctx.fail(f"input must have shape (N, C, d1, ..., dk), got rank {len(scores)}")
    if scores is not None and labels is not None and len(labels) != len(scores) - 1:
        raise ctx.fail(f"target must have rank {len(scores) - 1} (input's without C), got {len(labels)}")
    if ctx.has(1) and isinstance(ctx.input_types[1], TensorType) and not ctx.dtype(1).is_int:
        raise ctx.fail(f"target must hold integer class labels, got {ctx.dtype(1).value}")


def _loss_type(ctx: InferContext) -> TensorType:
    """The loss: the labels' shape for reduction "none", else a scalar; the scores' dtype."""
    if ctx.attrs["reduction"] != "none":
        return TensorType(ctx.dtype(0), ())
    shape = ctx.shape(1)
    if shape is None and ctx.shape(0) is not None:
        scores = ctx.shape(0)
        shape = (scores[0],) + tuple(scores[2:])
    return TensorType(ctx.dtype(0), shape)


def _compute_dtype(dtype: np.dtype) -> np.dtype:
    """Compute narrow floats (float16, bfloat16, ...) in float32; float64 stays float64."""
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


def nll(log_prob: np.ndarray, target: np.ndarray, weight: np.ndarray | None, reduction: str,
        ignore_index: int | None) -> np.ndarray:
    """Negative log likelihood of ``target`` under ``log_prob`` (N, C, d...), in log_prob's
    compute dtype (float32 or float64); see the module docstring for the semantics."""
    if log_prob.ndim < 2:
        raise ValueError(f"input must have shape (N, C, d1, ..., dk), got {list(log_prob.shape)}")
    if target.shape != (log_prob.shape[0],) + log_prob.shape[2:]:
        raise ValueError(f"target shape {list(target.shape)} does not match input shape "
                         f"{list(log_prob.shape)} without its class axis")
    classes = log_prob.shape[1]
    labels = target.astype(np.int64)
    ignored = labels == ignore_index if ignore_index is not None else np.zeros(labels.shape, bool)
    # Ignored labels may lie outside [0, C) (e.g. -1): gather class 0 for them, then weigh by 0.
    safe = np.where(ignored, 0, labels)
    bad = (safe < 0) | (safe >= classes)
    if np.any(bad):
        raise ValueError(f"target holds label {int(labels[bad][0])} outside [0, {classes})")
    picked = np.take_along_axis(log_prob, safe[:, None], axis=1)[:, 0]
    if weight is not None:
        w = np.asarray(weight, dtype=log_prob.dtype)[safe]
    else:
        w = np.ones(labels.shape, log_prob.dtype)
    w = np.where(ignored, 0, w).astype(log_prob.dtype)
    loss = -picked * w
    if reduction == "none":
        return loss
    if reduction == "sum":
        return np.asarray(loss.sum())
    if reduction == "mean":
        with np.errstate(invalid="ignore", divide="ignore"):  # all samples ignored: 0/0 = nan
            return np.asarray(loss.sum() / w.sum())
    raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")


def log_softmax(x: np.ndarray, axis: int = 1) -> np.ndarray:
    """log(softmax(x)) along ``axis``, computed stably (shifted by the maximum)."""
    shifted = x - np.max(x, axis=axis, keepdims=True)
    with np.errstate(divide="ignore"):
        return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


# -- ops -------------------------------------------------------------------------------------

def _infer_nll(ctx: InferContext) -> list[Type]:
    return [_loss_type(ctx)]


@op("loss.negative_log_likelihood_loss", inputs=["input", "target", "weight?"], outputs=["loss"],
    attrs=_LOSS_ATTRS, infer=_infer_nll, verify=_verify_loss)
def negative_log_likelihood_loss(input, target, weight=None, *, reduction="mean",  # noqa: A002
                                 ignore_index=None):
    """loss[n, d...] = -input[n, target[n, d...], d...] * weight[target[n, d...]], 0 where the
    target is ``ignore_index``; then reduced ("none", "sum", or "mean" = sum / total weight)."""
    dtype = _compute_dtype(input.dtype)
    out = nll(input.astype(dtype), target, weight, reduction, ignore_index)
    return out.astype(input.dtype)


def _infer_sce(ctx: InferContext) -> list[Type]:
    scores = ctx.type(0)
    return [_loss_type(ctx), TensorType(scores.dtype, scores.shape)]


@op("loss.softmax_cross_entropy_loss", inputs=["scores", "labels", "weights?"],
    outputs=["output", "log_prob?"], attrs=_LOSS_ATTRS, infer=_infer_sce, verify=_verify_loss)
def softmax_cross_entropy_loss(scores, labels, weights=None, *, reduction="mean", ignore_index=None):
    """The negative log likelihood loss of log_softmax(scores) along the class axis (1); the
    second output is that log_softmax."""
    dtype = _compute_dtype(scores.dtype)
    log_prob = log_softmax(scores.astype(dtype), axis=1)
    loss = nll(log_prob, labels, weights, reduction, ignore_index)
    return loss.astype(scores.dtype), log_prob.astype(scores.dtype)
