"""The training op family: the optimizer steps of ONNX's ``ai.onnx.preview.training`` domain
(Adagrad, Adam, Momentum; Gradient needs automatic differentiation and is not defined).

Each op updates one or more tensors at once. Its inputs are the learning rate ``R`` and the
update count ``T`` (scalars), then groups of n tensors each: the tensors X_1..X_n, their
gradients G_1..G_n, and the optimizer's state (H for Adagrad; V and H for Adam; V for Momentum).
The outputs are the new X_1..X_n followed by the new state, group by group, in input order.
Every tensor is updated independently with the formulas of the ONNX spec, computed in float64
and returned in each tensor's own dtype.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from qir.ir.opdef import REQUIRED, Attr, InferContext, op
from qir.ir.types import TensorType, Type

# -- shared helpers --------------------------------------------------------------------------


def _groups(ctx: InferContext, per_tensor: int) -> int:
    """The number n of optimized tensors: the inputs after R and T are ``per_tensor`` groups of n."""
    rest = len(ctx) - 2
    if rest <= 0 or rest % per_tensor:
        raise ctx.fail(f"expects R, T and then {per_tensor} groups of n tensors each "
                       f"({per_tensor}·n inputs after R and T), got {rest}")
    return rest // per_tensor


def _verify_groups(per_tensor: int) -> Callable[[InferContext], None]:
    """A verify hook: input count fits, R and T are scalars (or 1-element), groups share shapes."""

    def verify(ctx: InferContext) -> None:
        n = _groups(ctx, per_tensor)
        for i, name in ((0, "R"), (1, "T")):
            shape = ctx.shape(i)
            if shape is not None and len(shape) > 1:
                raise ctx.fail(f"{name} must be a scalar, got shape {list(shape)}")
        for k in range(n):
            x = ctx.shape(2 + k)
            for g in range(1, per_tensor):
                other = ctx.shape(2 + g * n + k)
                if x is not None and other is not None and _known(x) and _known(other) and x != other:
                    raise ctx.fail(f"tensor {k + 1}: shape {list(other)} of input {2 + g * n + k} "
                                   f"differs from X's {list(x)}")

    return verify


def _known(shape) -> bool:
    return all(isinstance(d, int) for d in shape)


def _infer_groups(per_tensor: int) -> Callable[[InferContext], list[Type]]:
    """Outputs: the types of X_1..X_n, then of each state group (inputs after the gradients)."""

    def infer(ctx: InferContext) -> list[Type]:
        n = _groups(ctx, per_tensor)
        order = [2 + k for k in range(n)] + [2 + g * n + k for g in range(2, per_tensor) for k in range(n)]
        return [TensorType(ctx.dtype(i), ctx.shape(i)) for i in order]

    return infer


def _split(tensors: tuple, per_tensor: int) -> list[tuple]:
    """The variadic inputs as per_tensor groups of n arrays (X's, G's, then the states)."""
    if not tensors or len(tensors) % per_tensor:
        raise ValueError(f"expects {per_tensor} groups of n tensors after R and T, got {len(tensors)} tensors")
    n = len(tensors) // per_tensor
    return [tuple(tensors[g * n:(g + 1) * n]) for g in range(per_tensor)]


def _scalar(a: np.ndarray, name: str) -> float:
    a = np.asarray(a)
    if a.size != 1:
        raise ValueError(f"{name} must be a scalar, got shape {list(a.shape)}")
    return float(a.reshape(()))


def _wide(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


# -- ops -------------------------------------------------------------------------------------

@op("training.adagrad", inputs=["R", "T", "inputs*"], outputs=["outputs*"],
    attrs={"decay_factor": Attr("float", 0.0), "epsilon": Attr("float", 1e-6),
           "norm_coefficient": Attr("float", 0.0)},
    infer=_infer_groups(3), verify=_verify_groups(3))
def adagrad(R, T, *tensors, decay_factor=0.0, epsilon=1e-6, norm_coefficient=0.0):  # noqa: N803
    """One ADAGRAD step. Inputs R, T, X..., G..., H...; outputs X_new..., H_new...:
    r = R / (1 + T·decay_factor); G' = norm_coefficient·X + G; H_new = H + G'²;
    X_new = X − r·G' / (√H_new + epsilon)."""
    xs, gs, hs = _split(tensors, 3)
    r = _scalar(R, "R") / (1 + _scalar(T, "T") * decay_factor)
    new_x, new_h = [], []
    for x, g, h in zip(xs, gs, hs):
        g_reg = norm_coefficient * _wide(x) + _wide(g)
        h_new = _wide(h) + g_reg * g_reg
        x_new = _wide(x) - r * g_reg / (np.sqrt(h_new) + epsilon)
        new_x.append(x_new.astype(x.dtype))
        new_h.append(h_new.astype(h.dtype))
    return tuple(new_x + new_h)


@op("training.adam", inputs=["R", "T", "inputs*"], outputs=["outputs*"],
    attrs={"alpha": Attr("float", 0.9), "beta": Attr("float", 0.999), "epsilon": Attr("float", 1e-6),
           "norm_coefficient": Attr("float", 0.0), "norm_coefficient_post": Attr("float", 0.0)},
    infer=_infer_groups(4), verify=_verify_groups(4))
def adam(R, T, *tensors, alpha=0.9, beta=0.999, epsilon=1e-6, norm_coefficient=0.0,  # noqa: N803
         norm_coefficient_post=0.0):
    """One Adam step. Inputs R, T, X..., G..., V..., H...; outputs X_new..., V_new..., H_new...:
    G' = norm_coefficient·X + G; V_new = α·V + (1−α)·G'; H_new = β·H + (1−β)·G'²;
    R' = R·√(1−β^T)/(1−α^T) when T > 0, else R;
    X_new = (1 − norm_coefficient_post)·(X − R'·V_new / (√H_new + epsilon))."""
    xs, gs, vs, hs = _split(tensors, 4)
    r, t = _scalar(R, "R"), _scalar(T, "T")
    # Bias correction of the moment estimates; undefined (and skipped) before the first update.
    r_adj = r * np.sqrt(1 - beta ** t) / (1 - alpha ** t) if t > 0 else r
    new_x, new_v, new_h = [], [], []
    for x, g, v, h in zip(xs, gs, vs, hs):
        g_reg = norm_coefficient * _wide(x) + _wide(g)
        v_new = alpha * _wide(v) + (1 - alpha) * g_reg
        h_new = beta * _wide(h) + (1 - beta) * g_reg * g_reg
        x_new = _wide(x) - r_adj * v_new / (np.sqrt(h_new) + epsilon)
        new_x.append(((1 - norm_coefficient_post) * x_new).astype(x.dtype))
        new_v.append(v_new.astype(v.dtype))
        new_h.append(h_new.astype(h.dtype))
    return tuple(new_x + new_v + new_h)


MOMENTUM_MODES = ("standard", "nesterov")


def _verify_momentum(ctx: InferContext) -> None:
    _verify_groups(3)(ctx)
    if ctx.attrs["mode"] not in MOMENTUM_MODES:
        raise ctx.fail(f"mode must be one of {', '.join(MOMENTUM_MODES)}, got {ctx.attrs['mode']!r}")


@op("training.momentum", inputs=["R", "T", "inputs*"], outputs=["outputs*"],
    attrs={"alpha": Attr("float", REQUIRED), "beta": Attr("float", REQUIRED),
           "mode": Attr("str", REQUIRED, "standard | nesterov"), "norm_coefficient": Attr("float", REQUIRED)},
    infer=_infer_groups(3), verify=_verify_momentum)
def momentum(R, T, *tensors, alpha, beta, mode, norm_coefficient):  # noqa: N803
    """One step of SGD with momentum. Inputs R, T, X..., G..., V...; outputs X_new..., V_new...:
    G' = norm_coefficient·X + G; β' = β when T > 0, else 1; V_new = α·V + β'·G';
    X_new = X − R·V_new (standard) or X − R·(G' + α·V_new) (nesterov)."""
    if mode not in MOMENTUM_MODES:
        raise ValueError(f"mode must be one of {', '.join(MOMENTUM_MODES)}, got {mode!r}")
    xs, gs, vs = _split(tensors, 3)
    r = _scalar(R, "R")
    beta_adj = beta if _scalar(T, "T") > 0 else 1.0
    new_x, new_v = [], []
    for x, g, v in zip(xs, gs, vs):
        g_reg = norm_coefficient * _wide(x) + _wide(g)
        v_new = alpha * _wide(v) + beta_adj * g_reg
        step = v_new if mode == "standard" else g_reg + alpha * v_new
        new_x.append((_wide(x) - r * step).astype(x.dtype))
        new_v.append(v_new.astype(v.dtype))
    return tuple(new_x + new_v)
