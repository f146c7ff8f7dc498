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
from qir.targets.kryo import codegen_int8 as cg8
from qir.targets.kryo.host import host


def _panels(w: np.ndarray, groups: int, nr: int) -> np.ndarray:
    """w [M, Cg, KH, KW] → [G][P][KH·KW·Cg][nr], zero-padded output channels."""
    m, cg, kh, kw = w.shape
    mg = m // groups
    p = -(-mg // nr)
    k = kh * kw * cg
    # [G][mg][K] with K tap-major (kh, kw, cg); free for 1×1 / GEMM weights
    wk = w.reshape(groups, mg, cg, kh * kw).transpose(0, 1, 3, 2).reshape(groups, mg, k)
    out = np.zeros((groups, p, k, nr), np.float32)
    full = mg // nr
    # one strided copy per part (big FC weights: one pass over memory, not three)
    if full:
        out[:, :full] = wk[:, :full * nr].reshape(groups, full, nr, k).transpose(0, 1, 3, 2)
    if mg % nr:
        out[:, full, :, :mg - full * nr] = wk[:, full * nr:].transpose(0, 2, 1)
    return out


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
    bn = b if a["transB"] else b.T  # [N, K]
    if float(a["alpha"]) != 1.0:
        bn = bn * np.float32(a["alpha"])
    n = bn.shape[0]
    out = {"w": _panels(bn.reshape(n, -1, 1, 1), 1, k.schedule.gemm.nr)}
    if k.epilogue.bias:
        c = node.inputs[2].const.astype(np.float32) * np.float32(a["beta"])
        out["b"] = _bias_panels(np.broadcast_to(c.reshape(-1), (n,)) if c.size == 1 else c.reshape(-1), 1,
                                k.schedule.gemm.nr)
    return out


def _eltwise_arrays(node: Node, k: NodeKernel) -> dict[str, np.ndarray]:
    small = node.inputs[0 if k.schedule.swap else 1]
    return {"c": small.const.astype(np.float32).reshape(-1)}


def _matmul_arrays(node: Node, k: NodeKernel) -> dict[str, np.ndarray]:
    """A constant C of a Gemm whose B is computed (the kernel scales it by beta)."""
    return {"c": node.inputs[2].const.astype(np.float32).reshape(-1)}


def _attention_arrays(node: Node, k: NodeKernel) -> dict[str, np.ndarray]:
    """A constant attention mask as floats added to the scores (a bool one: 0 where true, else -inf)."""
    m = node.inputs[3].const
    if m.dtype == np.bool_:
        m = np.where(m, np.float32(0), np.float32(-np.inf))
    return {"mask": m.astype(np.float32).reshape(-1)}


def _rows_arrays(node: Node, k: NodeKernel) -> dict[str, np.ndarray]:
    """Layer-norm scale and bias broadcast to the normalized trailing dims, flat."""
    x = node.inputs[0]
    trailing = tuple(x.type.shape[len(x.type.shape) - _trailing_rank(node):])
    out = {}
    if node.inputs[1].const is not None:  # a computed scale or bias is read in place
        out["scale"] = np.broadcast_to(node.inputs[1].const.astype(np.float32), trailing)
    if k.schedule.bias and node.inputs[2].const is not None:
        out["bias"] = np.broadcast_to(node.inputs[2].const.astype(np.float32), trailing)
    return out


def _trailing_rank(node: Node) -> int:
    rank = len(node.inputs[0].type.shape)
    axis = int(get_op(node.op).resolve_attrs(node.attrs)["axis"]) % rank
    return rank - axis


def pack_weights(lowered: LoweredGraph, code_host=None) -> np.ndarray:
    """The packed-weights blob of ``lowered`` (float32, 64-byte aligned start); ``code_host``: the
    Host the code is generated for (default: this machine at ``lowered.isa``; cross builds pass
    theirs, since integer weight layouts depend on the host's dot-product path)."""
    raw = np.zeros(lowered.weights_size + 16, np.float32)
    start = (-raw.ctypes.data % 64) // 4
    blob = raw[start:start + lowered.weights_size]
    by_node = {n.name: n for n in lowered.graph.nodes}
    packed: dict[str, dict[str, np.ndarray]] = {}
    for (name, key), slot in lowered.weights.items():
        node, k = by_node[name], lowered.kernels[name]
        if k.kernel in cg8.PACKERS:  # integer kernels: bytes in float32 words
            arrays = cg8.PACKERS[k.kernel](node, k, code_host or host(lowered.isa.name))
            blob[slot.offset:slot.offset + slot.size] = cg8.pack_bytes(arrays, key, slot.size)
            continue
        if name not in packed:  # once per node, not per slot (VGG's FC weights are 400 MB)
            packed[name] = {"conv": _conv_arrays, "gemm": _gemm_arrays, "eltwise": _eltwise_arrays,
                            "rows": _rows_arrays, "matmul": _matmul_arrays,
                            "attention": _attention_arrays}[k.kernel](node, k)
        arrays = packed[name]
        a = np.ascontiguousarray(arrays[key], dtype=np.float32).reshape(-1)
        if a.size != slot.size:
            raise AssertionError(f"{name}.{key}: packed {a.size} floats for a slot of {slot.size}")
        blob[slot.offset:slot.offset + slot.size] = a
    return blob

