"""Packing constants at compile time into the layouts the generated kernels read.

One float32 blob holds every packed constant at the offsets ``LoweredGraph.weights`` chose
(64-byte aligned): conv/GEMM weights as panels ``[groups][panels][kh·kw·cg][nr]`` (zero-padded
past the last output channel, so the kernels load them unmasked), depthwise weights as
``[kh·kw][c rounded up to vectors]``, biases per panel, and broadcast operands of elementwise ops.
"""

from __future__ import annotations

import numpy as np

from qir.ir.graph import Node
from qir.ir.opdef import get_op
from qir.lowering.kernels import LoweredGraph, NodeKernel


def _panels(w: np.ndarray, groups: int, nr: int) -> np.ndarray:
    """w [M, Cg, KH, KW] → [G][P][KH·KW·Cg][nr], zero-padded output channels."""
    m, cg, kh, kw = w.shape
    mg = m // groups
    p = -(-mg // nr)
    wt = w.reshape(groups, mg, cg, kh, kw).transpose(0, 3, 4, 2, 1).reshape(groups, kh * kw * cg, mg)
    out = np.zeros((groups, kh * kw * cg, p * nr), np.float32)
    out[:, :, :mg] = wt
    return out.reshape(groups, kh * kw * cg, p, nr).transpose(0, 2, 1, 3)


def _bias_panels(b: np.ndarray, groups: int, nr: int) -> np.ndarray:
    mg = b.size // groups
    p = -(-mg // nr)
    out = np.zeros((groups, p * nr), np.float32)
    out[:, :mg] = b.reshape(groups, mg)
    return out


def _conv_arrays(node: Node, k: NodeKernel) -> dict[str, np.ndarray]:
    w = node.inputs[1].const.astype(np.float32)
    b = node.inputs[2].const.astype(np.float32) if k.epilogue.bias else None
    s = k.schedule
    if s.kind == "depthwise":
        c = w.shape[0]
        cp = -(-c // s.gemm.lanes) * s.gemm.lanes
        out = {"w": np.zeros((w.shape[2] * w.shape[3], cp), np.float32)}
        out["w"][:, :c] = w.reshape(c, -1).T
        if b is not None:
            out["b"] = np.zeros(cp, np.float32)
            out["b"][:c] = b
        return out
    out = {"w": _panels(w, k.geometry.groups, s.gemm.nr)}
    if b is not None:
        out["b"] = _bias_panels(b, k.geometry.groups, s.gemm.nr)
    return out


def _gemm_arrays(node: Node, k: NodeKernel) -> dict[str, np.ndarray]:
    if node.op == "linalg.matmul":
        a = {"alpha": 1.0, "beta": 1.0, "transB": 0}
    else:
        a = get_op(node.op).resolve_attrs(node.attrs)
    b = node.inputs[1].const.astype(np.float32)
    bt = (b.T if a["transB"] else b) * np.float32(a["alpha"])  # [K, N]
    n = bt.shape[1]
    out = {"w": _panels(np.ascontiguousarray(bt.T).reshape(n, -1, 1, 1), 1, k.schedule.gemm.nr)}
    if k.epilogue.bias:
        c = node.inputs[2].const.astype(np.float32) * np.float32(a["beta"])
        out["b"] = _bias_panels(np.broadcast_to(c.reshape(-1), (n,)) if c.size == 1 else c.reshape(-1), 1,
                                k.schedule.gemm.nr)
    return out


def _eltwise_arrays(node: Node, k: NodeKernel) -> dict[str, np.ndarray]:
    small = node.inputs[0 if k.schedule.swap else 1]
    return {"c": small.const.astype(np.float32).reshape(-1)}


def _rows_arrays(node: Node, k: NodeKernel) -> dict[str, np.ndarray]:
    """Layer-norm scale and bias broadcast to the normalized trailing dims, flat."""
    x = node.inputs[0]
    trailing = tuple(x.type.shape[len(x.type.shape) - _trailing_rank(node):])
    out = {"scale": np.broadcast_to(node.inputs[1].const.astype(np.float32), trailing)}
    if k.schedule.bias:
        out["bias"] = np.broadcast_to(node.inputs[2].const.astype(np.float32), trailing)
    return out


def _trailing_rank(node: Node) -> int:
    rank = len(node.inputs[0].type.shape)
    axis = int(get_op(node.op).resolve_attrs(node.attrs)["axis"]) % rank
    return rank - axis


def pack_weights(lowered: LoweredGraph) -> np.ndarray:
    """The packed-weights blob of ``lowered`` (float32, 64-byte aligned start)."""
    raw = np.zeros(lowered.weights_size + 16, np.float32)
    start = (-raw.ctypes.data % 64) // 4
    blob = raw[start:start + lowered.weights_size]
    by_node = {n.name: n for n in lowered.graph.nodes}
    for (name, key), slot in lowered.weights.items():
        node, k = by_node[name], lowered.kernels[name]
        arrays = {"conv": _conv_arrays, "gemm": _gemm_arrays, "eltwise": _eltwise_arrays,
                  "rows": _rows_arrays}[k.kernel](node, k)
        a = np.ascontiguousarray(arrays[key], dtype=np.float32).reshape(-1)
        if a.size != slot.size:
            raise AssertionError(f"{name}.{key}: packed {a.size} floats for a slot of {slot.size}")
        blob[slot.offset:slot.offset + slot.size] = a
    return blob

