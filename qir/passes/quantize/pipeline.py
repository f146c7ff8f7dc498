"""The quantization flow: prepare → (CLE, bias correction) → calibrate → choose params → lower.

``quantize(graph, config, calibration)`` is what ``qir.compile(..., quantize=...)`` and
``qirc quantize`` run on an optimized float graph. ``Calibrated`` keeps the prepared float graph
with its calibration so that other options (another range algorithm, some tensors in int16 or
float — what automatic mixed precision tries) re-lower without recalibrating.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import attrs

from qir.errors import QirError
from qir.ir.graph import Graph, Node
from qir.ir.ops.fused import expand_all
from qir.ir.types import QuantParams
from qir.ir.verifier import verify
from qir.passes.quantize.calibrate import CalibrationTable, calibrate
from qir.passes.quantize.config import Config
from qir.passes.quantize.dataset import load_calibration_set
from qir.passes.quantize.lower import CLAMP_ACTIVATIONS, QuantPlan, lower
from qir.passes.quantize.observers import weight_absmax
from qir.passes.quantize.params import activation_params, weight_params


def prepare(graph: Graph) -> int:
    """Expand the fused ops whose epilogue has no integer form (a residual add, a sigmoid...),
    so that each part gets its own range; returns how many were expanded."""
    def needs_split(node: Node) -> bool:
        if node.op not in ("fused.conv", "fused.gemm"):
            return False
        residual = node.op == "fused.conv" and len(node.inputs) > 3 and node.inputs[3] is not None
        return residual or node.attrs.get("activation", "none") not in CLAMP_ACTIVATIONS
    return expand_all(graph, needs_split)


@attrs.define
class Calibrated:
    """A prepared float graph, its calibration feeds and table, under ``config``."""

    graph: Graph
    feeds: list[dict]
    table: CalibrationTable
    config: Config
    encodings: Any = None  # an Encodings, when the config names a file

    def ranges(self, config: Config | None = None) -> dict[str, tuple[float, float]]:
        config = config or self.config
        return self.table.ranges(config.algorithm, bitwidth=config.act_bitwidth,
                                 percentile=config.percentile)

    def plan(self, config: Config | None = None, *, bits: Mapping[str, int] | None = None,
             float_nodes: Iterable[str] = ()) -> QuantPlan:
        """Params for every calibrated tensor: encodings first, then ``bits`` / overrides, then
        the config's bitwidth over the ``config.algorithm`` range."""
        config = config or self.config
        bits = dict(bits or {})
        float_nodes = set(float_nodes)
        _apply_overrides(self.graph, config, bits, float_nodes)
        activations: dict[str, QuantParams] = {}
        fixed = self.encodings.activations if self.encodings is not None else {}
        for name in self.table:
            b = bits.get(name, config.act_bitwidth)
            algo_range = self.table.range(name, config.algorithm, bitwidth=b,
                                          percentile=config.percentile)
            activations[name] = activation_params(*algo_range, b, config.act_signed)
        for name, qp in fixed.items():
            if qp is None:
                float_nodes.update(_producers(self.graph, name))
            else:
                activations[name] = qp
        weights = {name: qp for name, qp in (self.encodings.params.items() if self.encodings else ())
                   if qp is not None}
        if config.param_algorithm != "minmax":
            weights = {**_mse_weights(self.graph, config), **weights}
        return QuantPlan(activations, config, weights, float_nodes)

    def lower(self, config: Config | None = None, **plan_options) -> "QuantizeResult":
        """A quantized copy of the prepared graph (the prepared graph stays float)."""
        config = config or self.config
        graph = self.graph.copy()
        plan = self.plan(config, **plan_options)
        float_ops = lower(graph, plan)
        verify(graph)
        return QuantizeResult(graph, config, float_ops, plan)


@attrs.define
class QuantizeResult:
    """A quantized graph, the config it was made with, and the ops that stayed float."""

    graph: Graph
    config: Config
    float_ops: dict[str, int]
    plan: QuantPlan


def _producers(graph: Graph, value_name: str) -> list[str]:
    return [n.name for n in graph.nodes if any(v.name == value_name for v in n.outputs)]


def _apply_overrides(graph: Graph, config: Config, bits: dict[str, int], float_nodes: set[str]) -> None:
    """Config overrides keyed by value name, node name, source-model node name or op name."""
    if not config.overrides:
        return
    matched: set[str] = set()
    for node in graph.nodes:
        for key in (node.name, node.op, *node.provenance, *(v.name for v in node.outputs)):
            precision = config.overrides.get(key)
            if precision is None:
                continue
            matched.add(key)
            if precision == "float":
                float_nodes.add(node.name)
            else:
                for v in node.outputs:
                    bits[v.name] = 16 if precision == "int16" else 8
    for value in graph.inputs:
        if value.name in config.overrides:
            matched.add(value.name)
            if config.overrides[value.name] != "float":
                bits[value.name] = 16 if config.overrides[value.name] == "int16" else 8
    unknown = sorted(set(config.overrides) - matched)
    if unknown:
        import difflib

        names = [v.name for v in graph.values()] + [n.name for n in graph.nodes]
        hints = "; ".join(f"{u!r} (closest: {', '.join(difflib.get_close_matches(u, names, 3)) or 'none'})"
                          for u in unknown)
        raise QirError(f"precision overrides name nothing in the model: {hints}",
                       hint="use a tensor name, a node name or an op name such as nn.softmax")


def _mse_weights(graph: Graph, config: Config) -> dict[str, QuantParams]:
    """Weight params with MSE-optimal clipping, for the weights of convs and gemms."""
    found = {}
    for node in graph.nodes:
        axis_of = {"nn.conv": 0, "fused.conv": 0}.get(node.op)
        if axis_of is None or node.inputs[1].const is None:
            continue
        w = node.inputs[1]
        axis = axis_of if config.per_channel else None
        absmax = weight_absmax(w.const, axis, config.param_bitwidth, config.param_algorithm)
        found[w.name] = weight_params(w.const, axis, config.param_bitwidth, absmax)
    return found


def calibrate_graph(graph: Graph, config: Config | str, calibration: Any, *,
                    progress: bool = False) -> Calibrated:
    """Prepare ``graph`` (in place), apply CLE / bias correction as configured, and calibrate."""
    config = Config.of(config)
    feeds = load_calibration_set(calibration, graph)
    prepare(graph)
    if config.cle:
        from qir.passes.quantize.equalize import equalize_cross_layer

        equalize_cross_layer(graph)
    if config.bias_correction:
        from qir.passes.quantize.bias_correction import correct_bias

        correct_bias(graph, feeds, bitwidth=config.param_bitwidth, per_channel=config.per_channel,
                     progress=progress)
    table = calibrate(graph, feeds, progress=progress)
    encodings = None
    if config.encodings is not None:
        from qir.passes.quantize.encodings import load_encodings

        encodings = load_encodings(config.encodings,
                                   value_names=[v.name for v in graph.values() if v.const is None],
                                   param_names=list(graph.constants))
    return Calibrated(graph, feeds, table, config, encodings)


def quantize(graph: Graph, config: Config | str = "int8", calibration: Any = None, *,
             progress: bool = False) -> QuantizeResult:
    """Quantize an optimized float ``graph`` (left as it is) with ``config`` over the
    ``calibration`` set (feeds, .npy/.npz files, a directory or an input list)."""
    config = Config.of(config)
    if config.scheme == "fp16":
        from qir.passes.quantize.fp16 import to_fp16

        graph = graph.copy()
        to_fp16(graph)
        return QuantizeResult(graph, config, {}, QuantPlan({}, config))
    if calibration is None:
        raise QirError("quantization needs a calibration set",
                       hint="pass calibration=[{input name: array}, ...] or a .npz / input list")
    calibrated = calibrate_graph(graph.copy(), config, calibration, progress=progress)
    if config.mixed:
        from qir.passes.quantize.debugger import auto_mixed_precision

        return auto_mixed_precision(calibrated, target_sqnr_db=config.target_sqnr_db).result
    return calibrated.lower()
