"""Ops that belong to no other family: NonMaxSuppression, TfIdfVectorizer and the ai.onnx.ml
ops ArrayFeatureExtractor, Binarizer, LabelEncoder and TreeEnsemble."""

from __future__ import annotations

import enum

import numpy as np

from qir.ir.opdef import Attr, InferContext, op
from qir.ir.ops.infer import same_as
from qir.ir.types import DType, TensorType, Type

# -- NonMaxSuppression ------------------------------------------------------------------------


def _corners(boxes: np.ndarray, center_point_box: int) -> np.ndarray:
    """Boxes as (y_min, x_min, y_max, x_max), whatever corner order or format they came in."""
    boxes = boxes.astype(np.float64)
    if center_point_box:
        xc, yc, w, h = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
        return np.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], axis=1)
    y1, x1, y2, x2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    return np.stack([np.minimum(y1, y2), np.minimum(x1, x2), np.maximum(y1, y2), np.maximum(x1, x2)], axis=1)


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Intersection over union of one (y0, x0, y1, x1) box with many (0 where an area is empty)."""
    h = np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0])
    w = np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1])
    inter = np.where((h > 0) & (w > 0), h * w, 0.0)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    union = area + areas - inter
    ok = (inter > 0) & (area > 0) & (areas > 0) & (union > 0)
    return np.where(ok, inter / np.where(union > 0, union, 1), 0.0)


def _scalar(value, default):
    return default if value is None or np.size(value) == 0 else np.asarray(value).reshape(-1)[0]


@op("misc.non_max_suppression",
    inputs=["boxes", "scores", "max_output_boxes_per_class?", "iou_threshold?", "score_threshold?"],
    outputs=["selected_indices"],
    attrs={"center_point_box": Attr("int", 0, "0: [y1, x1, y2, x2] corners; 1: [x_center, y_center, w, h]")},
    infer=lambda ctx: [TensorType(DType.INT64, ("?", 3))])
def non_max_suppression(boxes, scores, max_output_boxes_per_class=None, iou_threshold=None,
                        score_threshold=None, *, center_point_box):
    """Greedy per-class selection of the best-scoring boxes that overlap less than iou_threshold.

    Returns [batch, class, box] rows, by batch, then class, then decreasing score.
    """
    limit = int(_scalar(max_output_boxes_per_class, 0))
    iou_max = float(_scalar(iou_threshold, 0.0))
    min_score = None if score_threshold is None or np.size(score_threshold) == 0 else float(_scalar(score_threshold, 0))
    selected: list[tuple[int, int, int]] = []
    for b in range(boxes.shape[0]):
        corners = _corners(boxes[b], center_point_box)
        for c in range(scores.shape[1]):
            s = scores[b, c]
            # Highest score first; equal scores keep the lower box index first.
            order = [int(i) for i in np.lexsort((np.arange(len(s)), -s.astype(np.float64)))
                     if min_score is None or s[i] > min_score]
            kept: list[int] = []
            for i in order:
                if len(kept) >= limit:
                    break
                if not kept or not np.any(_iou(corners[i], corners[kept]) > iou_max):
                    kept.append(i)
            selected.extend((b, c, i) for i in kept)
    return np.array(selected, dtype=np.int64).reshape(-1, 3)


# -- TfIdfVectorizer --------------------------------------------------------------------------

def _ngram_table(pool: list, ngram_counts, ngram_indexes, min_n: int, max_n: int) -> dict[tuple, int]:
    """Pool n-gram (tuple) -> output column, for the n-gram sizes in [min_n, max_n]."""
    table: dict[tuple, int] = {}
    ngram_id = 0
    starts = list(ngram_counts) + [len(pool)]
    for size_minus_1, (begin, end) in enumerate(zip(starts[:-1], starts[1:])):
        n = size_minus_1 + 1
        for at in range(begin, end, n):
            if min_n <= n <= max_n:
                table[tuple(pool[at:at + n])] = int(ngram_indexes[ngram_id])
            ngram_id += 1
    return table


def _count_row(row: list, table: dict[tuple, int], out_size: int, min_n: int, max_n: int,
               max_skip: int) -> np.ndarray:
    counts = np.zeros(out_size, dtype=np.float64)
    for dist in range(1, max_skip + 2):
        # Unigrams do not depend on the skip distance: count them at distance 1 only.
        sizes = range(max(min_n, 1 if dist == 1 else 2), max_n + 1)
        for start in range(len(row)):
            for n in sizes:
                last = start + dist * (n - 1)
                if last >= len(row):
                    break
                column = table.get(tuple(row[start:last + 1:dist]))
                if column is not None:
                    counts[column] += 1
    return counts


def _infer_tfidf(ctx: InferContext) -> list[Type]:
    size = max(ctx.attrs["ngram_indexes"], default=-1) + 1
    shape = ctx.shape(0)
    if shape is None:
        return [TensorType(DType.FLOAT32, None)]
    return [TensorType(DType.FLOAT32, (size,) if len(shape) <= 1 else (shape[0], size))]


@op("misc.tf_idf_vectorizer", inputs=["X"], outputs=["Y"],
    attrs={"max_gram_length": Attr("int"), "min_gram_length": Attr("int"), "max_skip_count": Attr("int"),
           "mode": Attr("str", doc="TF, IDF or TFIDF"), "ngram_counts": Attr("ints"),
           "ngram_indexes": Attr("ints"), "pool_int64s": Attr("ints", ()), "pool_strings": Attr("strs", ()),
           "weights": Attr("floats", ())},
    infer=_infer_tfidf)
def tf_idf_vectorizer(X, *, max_gram_length, min_gram_length, max_skip_count, mode, ngram_counts,
                      ngram_indexes, pool_int64s, pool_strings, weights):
    """Count the pool's n-grams (with skips) in each row of X, weighted by mode."""
    pool = [str(s) for s in pool_strings] if len(pool_strings) else [int(v) for v in pool_int64s]
    table = _ngram_table(pool, ngram_counts, ngram_indexes, min_gram_length, max_gram_length)
    out_size = max(ngram_indexes, default=-1) + 1
    rows = np.atleast_2d(X) if X.ndim <= 1 else X
    to_key = str if len(pool_strings) else int
    counts = np.stack([_count_row([to_key(v) for v in row], table, out_size, min_gram_length,
                                  max_gram_length, max_skip_count) for row in rows])
    w = np.asarray(weights, dtype=np.float64) if len(weights) else np.ones(out_size)
    if mode == "TF":
        y = counts
    elif mode == "IDF":
        y = np.where(counts > 0, w, 0.0)
    elif mode == "TFIDF":
        y = counts * w
    else:
        raise ValueError(f"mode must be TF, IDF or TFIDF, got {mode!r}")
    y = y.astype(np.float32)
    return y[0] if X.ndim <= 1 else y


# -- ai.onnx.ml -------------------------------------------------------------------------------

def _infer_feature_extractor(ctx: InferContext) -> list[Type]:
    shape, idx = ctx.shape(0), ctx.shape(1)
    out = None
    if shape is not None and idx is not None and all(isinstance(d, int) for d in idx):
        count = int(np.prod(idx)) if idx else 1
        out = (1, count) if len(shape) == 1 else (*shape[:-1], count)
    return [TensorType(ctx.dtype(0), out)]


@op("misc.array_feature_extractor", inputs=["X", "Y"], outputs=["Z"], infer=_infer_feature_extractor)
def array_feature_extractor(X, Y):
    """Select entries of the last axis of X by index (a 1-D X gives one row)."""
    index = np.asarray(Y).reshape(-1).astype(np.int64)
    out = X[..., index]
    return out.reshape((1, index.size) if X.ndim == 1 else (*X.shape[:-1], index.size))


@op("misc.binarizer", inputs=["X"], outputs=["Y"], attrs={"threshold": Attr("float", 0.0)},
    infer=same_as(0))
def binarizer(X, *, threshold):
    """1 where X > threshold, else 0, in X's type."""
    return (X > threshold).astype(X.dtype)


def _infer_label_encoder(ctx: InferContext) -> list[Type]:
    return [TensorType(DType.from_numpy(np.asarray(ctx.attrs["values_tensor"]).dtype), ctx.shape(0))]


@op("misc.label_encoder", inputs=["X"], outputs=["Y"],
    attrs={"keys_tensor": Attr("tensor", doc="1-D keys"), "values_tensor": Attr("tensor", doc="1-D values"),
           "default_tensor": Attr("tensor", doc="one-element value for keys not in keys_tensor")},
    infer=_infer_label_encoder)
def label_encoder(X, *, keys_tensor, values_tensor, default_tensor):
    """Map each element of X through keys → values (default for unknown keys)."""
    keys = np.asarray(keys_tensor).reshape(-1).tolist()
    values = np.asarray(values_tensor).reshape(-1)
    mapping = dict(zip(keys, values.tolist()))
    default = np.asarray(default_tensor).reshape(-1)[0]
    default = default.item() if hasattr(default, "item") else default
    flat = [mapping.get(v, default) for v in np.asarray(X).reshape(-1).tolist()]
    return np.array(flat, dtype=values.dtype).reshape(np.shape(X))


class _Mode(enum.IntEnum):
    LEQ = 0
    LT = 1
    GTE = 2
    GT = 3
    EQ = 4
    NEQ = 5
    MEMBER = 6


_COMPARE = {
    _Mode.LEQ: lambda x, s: x <= s, _Mode.LT: lambda x, s: x < s, _Mode.GTE: lambda x, s: x >= s,
    _Mode.GT: lambda x, s: x > s, _Mode.EQ: lambda x, s: x == s, _Mode.NEQ: lambda x, s: x != s,
    _Mode.MEMBER: lambda x, s: x in s,
}


def _member_sets(modes, membership_values) -> dict[int, set]:
    """Node index → its set of members (NaN-separated runs of membership_values, in node order)."""
    values = iter(np.asarray(membership_values if membership_values is not None else []).reshape(-1).tolist())
    sets = {}
    for i, mode in enumerate(modes):
        if mode == _Mode.MEMBER:
            members = set()
            for v in values:
                if np.isnan(v):
                    break
                members.add(v)
            sets[i] = members
    return sets


def _infer_tree_ensemble(ctx: InferContext) -> list[Type]:
    shape = ctx.shape(0)
    return [TensorType(ctx.dtype(0), None if shape is None else (shape[0], ctx.attrs["n_targets"]))]


_AGGREGATE = {0: "average", 1: "sum", 2: "min", 3: "max"}


@op("misc.tree_ensemble", inputs=["X"], outputs=["Y"],
    attrs={"aggregate_function": Attr("int", 1, "0 average, 1 sum, 2 min, 3 max"),
           "leaf_targetids": Attr("ints"), "leaf_weights": Attr("tensor"),
           "membership_values": Attr("tensor", None), "n_targets": Attr("int"),
           "nodes_falseleafs": Attr("ints"), "nodes_falsenodeids": Attr("ints"),
           "nodes_featureids": Attr("ints"), "nodes_hitrates": Attr("tensor", None),
           "nodes_missing_value_tracks_true": Attr("ints", ()), "nodes_modes": Attr("tensor"),
           "nodes_splits": Attr("tensor"), "nodes_trueleafs": Attr("ints"), "nodes_truenodeids": Attr("ints"),
           "post_transform": Attr("int", 0, "only 0 (none) is implemented"), "tree_roots": Attr("ints")},
    infer=_infer_tree_ensemble)
def tree_ensemble(X, *, aggregate_function, leaf_targetids, leaf_weights, membership_values, n_targets,
                  nodes_falseleafs, nodes_falsenodeids, nodes_featureids, nodes_hitrates,
                  nodes_missing_value_tracks_true, nodes_modes, nodes_splits, nodes_trueleafs,
                  nodes_truenodeids, post_transform, tree_roots):
    """Each tree routes a row to a leaf; leaf weights are aggregated per target."""
    if post_transform != 0:
        raise NotImplementedError("TreeEnsemble post_transform other than NONE is not implemented")
    modes = [_Mode(int(m)) for m in np.asarray(nodes_modes).reshape(-1)]
    splits = np.asarray(nodes_splits).reshape(-1).tolist()
    members = _member_sets(modes, membership_values)
    weights = np.asarray(leaf_weights).reshape(-1).tolist()
    tracks = list(nodes_missing_value_tracks_true) or [0] * len(modes)

    def leaf_of(row, node: int, is_leaf: bool) -> int:
        while not is_leaf:
            x = row[nodes_featureids[node]]
            go_true = (tracks[node] and np.isnan(x)) or _COMPARE[modes[node]](x, members.get(node, splits[node]))
            node, is_leaf = ((nodes_truenodeids[node], nodes_trueleafs[node]) if go_true
                             else (nodes_falsenodeids[node], nodes_falseleafs[node]))
        return node

    kind = _AGGREGATE[aggregate_function]
    init = {"average": 0.0, "sum": 0.0, "min": np.inf, "max": -np.inf}[kind]
    out = np.full((X.shape[0], n_targets), init, dtype=np.float64)
    for r, row in enumerate(np.asarray(X, dtype=np.float64)):
        for root in tree_roots:
            # A tree that is a single leaf: the root's two branches are the same leaf.
            single = (nodes_trueleafs[root] and nodes_falseleafs[root]
                      and nodes_truenodeids[root] == nodes_falsenodeids[root])
            leaf = nodes_truenodeids[root] if single else leaf_of(row, root, False)
            t, w = leaf_targetids[leaf], weights[leaf]
            if kind in ("sum", "average"):
                out[r, t] += w
            elif kind == "min":
                out[r, t] = min(out[r, t], w)
            else:
                out[r, t] = max(out[r, t], w)
    if kind == "average":
        out /= len(tree_roots)
    if kind in ("min", "max"):
        out[np.isinf(out)] = 0.0  # targets no tree reached
    return out.astype(X.dtype)
