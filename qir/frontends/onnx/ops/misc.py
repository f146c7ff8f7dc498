"""ONNX → qir converters for the misc family: NonMaxSuppression, TfIdfVectorizer and the
ai.onnx.ml ops (ArrayFeatureExtractor, Binarizer, LabelEncoder, TreeEnsemble)."""

from __future__ import annotations

import numpy as np

from qir.frontends.onnx.registry import ML_DOMAIN, converter, simple
from qir.ir.types import DType, TensorType

simple("NonMaxSuppression", "misc.non_max_suppression", since_version=10)
simple("ArrayFeatureExtractor", "misc.array_feature_extractor", domain=ML_DOMAIN)
simple("Binarizer", "misc.binarizer", domain=ML_DOMAIN)


@converter("TfIdfVectorizer", qir_op="misc.tf_idf_vectorizer", since_version=9)
def tf_idf_vectorizer(ctx):
    a = dict(ctx.attrs)
    for key in ("pool_int64s", "pool_strings", "weights"):
        a[key] = tuple(a.get(key, ()))
    return ctx.emit("misc.tf_idf_vectorizer", ctx.inputs, a)


# LabelEncoder: every older form (class lists, typed key/value lists) becomes the opset-4
# keys_tensor / values_tensor / default_tensor form.
_DEFAULTS = {"default_float": -0.0, "default_int64": -1, "default_string": "_Unused"}
_LISTS = {"floats": np.float32, "int64s": np.int64, "strings": object}


def _list_attr(ctx, prefix: str):
    if f"{prefix}_tensor" in ctx.attrs:
        return np.asarray(ctx.attrs[f"{prefix}_tensor"]).reshape(-1)
    for suffix, dtype in _LISTS.items():
        if f"{prefix}_{suffix}" in ctx.attrs:
            return np.array(list(ctx.attrs[f"{prefix}_{suffix}"]), dtype=dtype)
    raise ctx.fail(f"LabelEncoder needs {prefix}_tensor or one of {prefix}_floats/int64s/strings")


def _default_for(ctx, values: np.ndarray) -> np.ndarray:
    if "default_tensor" in ctx.attrs:
        return np.asarray(ctx.attrs["default_tensor"]).reshape(-1)[:1].astype(values.dtype)
    key = {"f": "default_float", "i": "default_int64", "u": "default_int64"}.get(values.dtype.kind, "default_string")
    return np.array([ctx.attrs.get(key, _DEFAULTS[key])], dtype=values.dtype)


@converter("LabelEncoder", qir_op="misc.label_encoder", domain=ML_DOMAIN)
def label_encoder(ctx):
    if ctx.opset < 2:  # classes_strings: strings ↔ their indices
        classes = np.array(list(ctx.attrs.get("classes_strings", ())), dtype=object)
        index = np.arange(len(classes), dtype=np.int64)
        x_type = ctx.inputs[0].type
        if isinstance(x_type, TensorType) and x_type.dtype == DType.STRING:
            keys, values = classes, index
            default = np.array([ctx.attrs.get("default_int64", -1)], dtype=np.int64)
        else:
            keys, values = index, classes
            default = np.array([ctx.attrs.get("default_string", "_Unused")], dtype=object)
    else:
        keys, values = _list_attr(ctx, "keys"), _list_attr(ctx, "values")
        default = _default_for(ctx, values)
    attrs = {"keys_tensor": keys, "values_tensor": values, "default_tensor": default}
    return ctx.emit("misc.label_encoder", ctx.inputs, attrs)


@converter("TreeEnsemble", qir_op="misc.tree_ensemble", domain=ML_DOMAIN, since_version=5)
def tree_ensemble(ctx):
    if int(ctx.attrs.get("post_transform", 0)) != 0:
        raise ctx.fail("TreeEnsemble post_transform other than NONE (0) is not supported yet")
    return ctx.emit("misc.tree_ensemble", ctx.inputs, dict(ctx.attrs))
