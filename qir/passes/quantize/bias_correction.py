"""Empirical bias correction (Nagel et al. 2019, §4.2; AIMET's empirical bias correction).

Quantizing a layer's weights, W → Q(W), shifts the mean of its output: E[Q(W)·x] − E[W·x] =
(Q(W) − W)·E[x] is not zero per output channel, and later layers (ReLU above all) turn that
bias into lasting error. Bias correction measures the shift on calibration data and folds its
negative into the layer's bias:

    b_i += E[y_float]_i − E[y_q]_i          (mean over batch and spatial positions)

where ``y_float`` is the layer's pre-activation output in the float model and ``y_q`` the same
output in the model whose conv/gemm weights are fake-quantized exactly as the integer lowering
does it (``weight_params`` per output channel or per tensor, ``fake_quantize(..., narrow=True)``).

**Sequential, in one pass.** Layers are corrected in topological order and each correction is
seen by the measurements after it (the quantized model carries the corrected biases forward), as
AIMET's empirical mode does. Rather than rerunning the graph once per layer (O(layers² × data)),
the float and the fake-quantized graphs are evaluated side by side, node by node, over all
calibration feeds at once: at a layer, both pre-activation outputs are known for every feed, the
correction follows from their means, is added to the quantized output (the same as rerunning the
layer with the new bias, up to float rounding) and evaluation goes on. That is one float and one
quantized run of the graph in total, O(layers × data), holding only the tensors still to be
read (per feed, for both graphs).

Pre-activation: for ``fused.conv`` / ``fused.gemm`` the correction is of the conv/gemm result
before the residual add and the activation (the part the bias belongs to); the node is run as
its conv/gemm part and then its epilogue, by the standard ops' own kernels (the fused kernels
are that composition, so the numbers are the interpreter's).

The graph stays float; only biases change (new constants, ``<old bias>_bc``, or ``<node>_bias``
for a layer that had none). Layers: ``nn.conv``, ``fused.conv``, ``linalg.gemm``,
``fused.gemm`` of the top-level graph with constant float weights (and a constant bias, or none;
a gemm with beta = 0 ignores its C and is skipped). MatMul has no bias input and is not
corrected.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import numpy as np

from qir.errors import ExecutionError, InputError, QirError
from qir.ir.graph import Graph, Node, Value
from qir.ir.interpreter import Interpreter
from qir.ir.opdef import call_kernel, conform, get_op
from qir.ir.ops.fused import apply_activation
from qir.passes.quantize.params import fake_quantize, weight_params
from qir.passes.cleanup import graph_tree

__all__ = ["correct_bias", "weight_axis", "fake_quantized_weights"]

_CONVS = ("nn.conv", "fused.conv")
_GEMMS = ("linalg.gemm", "fused.gemm")


def weight_axis(node: Node) -> int:
    """The axis of a conv/gemm weight that indexes output channels (a gemm's B is [N, K] with
    transB, else [K, N]): the axis of per-channel weight quantization."""
    if node.op in _GEMMS:
        return 0 if node.attrs.get("transB", 0) else 1
    return 0


def fake_quantized_weights(node: Node, w: np.ndarray, bitwidth: int = 8,
                           per_channel: bool = True) -> np.ndarray:
    """``w`` as the integer model sees it: symmetric narrow-range ``bitwidth``-bit, per output
    channel or per tensor (the rule the integer lowering uses)."""
    qp = weight_params(w, weight_axis(node) if per_channel else None, bitwidth)
    return fake_quantize(w, qp, narrow=True)


def correct_bias(graph: Graph, feeds: Sequence[Mapping[str, Any]], *, bitwidth: int = 8,
                 per_channel: bool = True, progress: bool = False) -> int:
    """Correct the biases of ``graph``'s convs and gemms in place for the mean shift that
    ``bitwidth``-bit weight quantization causes, measured on ``feeds`` (a list of input dicts
    keyed by graph input name); returns the number of layers whose bias changed.
    """
    feeds = _check_feeds(graph, feeds)
    layers = {id(n): n for n in graph.nodes if _is_layer(n)}
    if not layers:
        return 0
    run = _SideBySide(graph, feeds, layers, bitwidth, per_channel)
    corrections = run.evaluate(progress)
    changed = 0
    for node, delta in corrections:
        if np.any(delta != 0):
            _set_bias(graph, node, delta)
            changed += 1
    return changed


def _check_feeds(graph: Graph, feeds) -> list[Mapping[str, Any]]:
    if isinstance(feeds, Mapping):
        raise InputError("bias correction needs a list of feeds (input name → array), got one dict",
                         hint="pass [feeds] for a single sample")
    feeds = list(feeds)
    if not feeds:
        raise InputError("bias correction got an empty calibration set",
                         hint="give at least one feed (a dict of input name → array)")
    names = [v.name for v in graph.inputs]
    for i, feed in enumerate(feeds):
        missing = [n for n in names if n not in feed]
        if missing:
            raise InputError(f"calibration feed {i} lacks graph input(s) {', '.join(missing)}",
                             hint=f"the graph's inputs are {', '.join(names)}")
    return feeds


def _is_layer(node: Node) -> bool:
    if node.op not in _CONVS + _GEMMS or len(node.inputs) < 2:
        return False
    w = node.inputs[1]
    if w is None or w.const is None or w.const.dtype.kind != "f":
        return False
    b = node.inputs[2] if len(node.inputs) > 2 else None
    if b is not None and (b.const is None or b.const.dtype.kind != "f"):
        return False
    if node.op in _GEMMS:
        attrs = get_op(node.op).resolve_attrs(node.attrs)
        if attrs["beta"] == 0 or w.const.ndim != 2:
            return False
    return True


# -- evaluating the float and the fake-quantized graph side by side ---------------------------

class _SideBySide:
    """Per feed, one environment (value id → array) for the float graph and one for the graph
    with fake-quantized weights; values are dropped after their last reader."""

    def __init__(self, graph: Graph, feeds, layers: dict[int, Node], bitwidth: int, per_channel: bool):
        self.graph = graph
        self.layers = layers
        self.interp = Interpreter(graph)
        consts = {id(v): v.const for v in graph.constants.values()}
        self.float_envs = [self._env(consts, feed) for feed in feeds]
        self.quant_envs = [self._env(consts, feed) for feed in feeds]
        self.qweights = {key: fake_quantized_weights(n, n.inputs[1].const, bitwidth, per_channel)
                         for key, n in layers.items()}
        self.last_use = _last_uses(graph)

    def _env(self, consts: dict, feed) -> dict[int, Any]:
        env = dict(consts)
        for v in self.graph.inputs:
            env[id(v)] = conform(v, feed[v.name])
        return env

    def evaluate(self, progress: bool) -> list[tuple[Node, np.ndarray]]:
        """Run both graphs to the end; the per-channel correction of every layer, in order."""
        corrections = []
        nodes = list(enumerate(self.graph.nodes))
        for index, node in _progress(nodes, progress, len(self.layers)):
            if id(node) in self.layers:
                corrections.append((node, self._layer(node)))
            else:
                for env in self.float_envs + self.quant_envs:
                    self._bind(env, node, self._call(node, env))
            self._free(node, index)
        return corrections

    def _call(self, node: Node, env: dict[int, Any]) -> tuple:
        opdef = get_op(node.op)
        inputs = [None if v is None else env[id(v)] for v in node.inputs]
        run_sub = (functools.partial(self.interp.run_graph, outer=env) if opdef.needs_runner else None)
        try:
            return call_kernel(opdef, node, inputs, run_sub)
        except QirError:
            raise
        except Exception as exc:
            raise ExecutionError(f"bias correction: node {node.name} ({node.op}) failed: "
                                 f"{type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _bind(env: dict[int, Any], node: Node, results: tuple) -> None:
        for value, result in zip(node.outputs, results):
            env[id(value)] = conform(value, result)

    def _layer(self, node: Node) -> np.ndarray:
        """Measure the layer's mean shift, correct the quantized outputs, go on; the correction."""
        w = node.inputs[1].const
        qw = self.qweights[id(node)]
        float_pre = [_pre(node, env, w) for env in self.float_envs]
        quant_pre = [_pre(node, env, qw) for env in self.quant_envs]
        delta = _channel_mean(float_pre) - _channel_mean(quant_pre)
        for env, y in zip(self.float_envs, float_pre):
            self._bind(env, node, (_post(node, env, y),))
        for env, y in zip(self.quant_envs, quant_pre):
            y = y + _per_channel(delta, y).astype(y.dtype)
            self._bind(env, node, (_post(node, env, y),))
        return delta

    def _free(self, node: Node, index: int) -> None:
        for v in node.inputs:
            if v is not None and v.const is None and self.last_use.get(id(v)) == index:
                for env in self.float_envs + self.quant_envs:
                    env.pop(id(v), None)


def _last_uses(graph: Graph) -> dict[int, int]:
    """value id → index of the last top-level node reading it (subgraph reads count for the
    node holding the subgraph; graph outputs are not kept: nothing here returns them)."""
    last: dict[int, int] = {}
    for i, node in enumerate(graph.nodes):
        for v in node.inputs:
            if v is not None:
                last[id(v)] = i
        for sub in node.subgraphs():
            for inner in sub.walk():
                for v in inner.inputs:
                    if v is not None:
                        last[id(v)] = i
            for g in graph_tree(sub):
                for v in g.outputs:
                    last[id(v)] = i
    return last


def _progress(items: list, enabled: bool, layers: int):
    if not enabled:
        return items
    from rich.progress import track

    return track(items, description=f"bias correction ({layers} layers)", transient=True)


def _attrs_of(node: Node, op: str) -> dict[str, Any]:
    resolved = get_op(node.op).resolve_attrs(node.attrs)
    keys = get_op(op).attrs
    return {k: v for k, v in resolved.items() if k in keys}


def _pre(node: Node, env: dict[int, Any], w: np.ndarray) -> np.ndarray:
    """The conv/gemm result (with bias) before any epilogue, with weights ``w``."""
    x = env[id(node.inputs[0])]
    b = node.inputs[2] if len(node.inputs) > 2 else None
    b = None if b is None else env[id(b)]
    base = "nn.conv" if node.op in _CONVS else "linalg.gemm"
    return get_op(base).kernel(x, w, b, **_attrs_of(node, base))


def _post(node: Node, env: dict[int, Any], y: np.ndarray) -> np.ndarray:
    """The epilogue of a fused node (residual add, activation) applied to its conv/gemm part."""
    if node.op not in ("fused.conv", "fused.gemm"):
        return y
    attrs = get_op(node.op).resolve_attrs(node.attrs)
    if node.op == "fused.conv" and len(node.inputs) > 3 and node.inputs[3] is not None:
        y = get_op("elementwise.add").kernel(y, env[id(node.inputs[3])])
    return apply_activation(y, attrs["activation"], attrs["activation_params"])


def _channel_mean(outputs: list[np.ndarray]) -> np.ndarray:
    """Mean over everything but axis 1 (conv [N, M, *S] and gemm [M, N] alike), in float64."""
    total, count = 0.0, 0
    for y in outputs:
        axes = tuple(a for a in range(y.ndim) if a != 1)
        total = total + y.astype(np.float64).sum(axis=axes)
        count += y.size // y.shape[1]
    return total / count


def _per_channel(delta: np.ndarray, y: np.ndarray) -> np.ndarray:
    return delta.reshape((1, -1) + (1,) * (y.ndim - 2))


# -- writing the new biases ------------------------------------------------------------------

def _set_bias(graph: Graph, node: Node, delta: np.ndarray) -> None:
    """Add ``delta`` (per output channel) to the node's bias as a new constant."""
    w = node.inputs[1].const
    old = node.inputs[2] if len(node.inputs) > 2 else None
    if node.op in _GEMMS:
        beta = get_op(node.op).resolve_attrs(node.attrs)["beta"]
        delta = delta / beta  # Y = alpha·A·B + beta·C
    base = np.zeros(delta.shape) if old is None else old.const.astype(np.float64)
    # A conv bias is [M]; a gemm's C broadcasts to [M, N] and so does C + delta[N].
    array = (base + delta).astype(w.dtype)
    new = graph.add_constant(array, name=f"{old.name}_bc" if old is not None else f"{node.name}_bias")
    if len(node.inputs) > 2:
        node.set_input(2, new)
        if old is not None:
            _erase_if_dead(old)
        return
    _rebuild_with_bias(graph, node, new)


def _rebuild_with_bias(graph: Graph, node: Node, bias: Value) -> None:
    """A node without a bias slot (conv(x, w)) is replaced by the same node with one; names and
    provenance stay."""
    new = graph.add_node(node.op, [node.inputs[0], node.inputs[1], bias], node.attrs,
                         output_types=[o.type for o in node.outputs], provenance=node.provenance,
                         before=node)
    old_out, name = node.outputs[0], node.outputs[0].name
    graph.replace_all_uses(old_out, new.outputs[0])
    graph.erase_node(node)
    graph.rename(old_out, f"{name}_replaced")
    graph.rename(new.outputs[0], name)
    new.name, new.target = node.name, node.target


def _erase_if_dead(value: Value) -> None:
    owner = value.graph
    if (value.const is not None and not value.uses and owner is not None
            and owner.constants.get(value.name) is value
            and not any(value is o for o in owner.outputs)):
        owner.erase_constant(value)
