"""Calibration data: feed dicts, .npy/.npz/.raw files, folders, and QNN-style input lists.

``load_calibration_set(spec, graph)`` turns any of these into a list of checked feed dicts
(one per model run):

- a list (or other iterable) of feed dicts ``{input name: array}``, or one feed dict; for a
  single-input graph a bare array stands for ``{input: array}``;
- a ``.npy`` file (single-input graphs): one sample, or samples stacked on a new leading axis
  when it has one more dim than the input;
- a ``.npz`` file: keys are input names (one array under any key feeds a single-input graph),
  each array one sample, or all of them samples stacked on axis 0;
- a folder: its ``.npz`` files, and for single-input graphs its ``.npy`` and ``.raw`` files, in
  name order (other files and sub-folders are ignored);
- any other file: a QNN ``--input_list`` (as qnn-net-run reads it): one line per sample,
  entries separated by spaces, each ``path`` (inputs in graph order) or ``input_name:=path``;
  lines starting with ``#`` or ``%`` are comments / output names; relative paths are relative
  to the list's folder. ``.raw`` files hold little-endian data of the input's dtype and static
  shape; ``.npy`` files work too.

Every array is checked against the graph's inputs: names, dtype (float64 data is cast to a
float input's dtype, integer data to an integer input's dtype when the values fit), rank, and
fixed dims (symbolic dims take any size, the same size wherever a symbol repeats). Problems are
InputErrors naming the file (and line) and the input.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from qir.errors import InputError, QirError
from qir.ir.graph import Graph, Value
from qir.ir.shapes import check_input_shape
from qir.ir.types import DType, TensorType

Feed = dict[str, np.ndarray]

_DATA_SUFFIXES = (".npy", ".npz", ".raw")


def load_calibration_set(spec: Any, graph: Graph) -> list[Feed]:
    """The calibration samples ``spec`` describes, checked against ``graph``'s inputs."""
    inputs = list(graph.inputs)
    if isinstance(spec, (str, os.PathLike)):
        samples = _load_path(Path(spec), inputs)
    elif isinstance(spec, Mapping):
        samples = [(dict(spec), "the calibration feed")]
    elif isinstance(spec, np.ndarray):
        samples = [(_single_input_feed(spec, inputs, "the calibration array"), "the calibration array")]
    elif isinstance(spec, Iterable):
        samples = [(_as_feed(item, inputs, i), f"calibration sample {i}")
                   for i, item in enumerate(spec)]
    else:
        raise InputError(f"calibration data of type {type(spec).__name__} is not understood",
                         hint="give a list of {input name: array} dicts, a .npy/.npz file, a folder "
                              "or a QNN input_list file")
    if not samples:
        raise QirError("the calibration set is empty",
                       hint="give at least one sample (more, ~100-500, give better ranges)")
    return [_check_feed(feed, inputs, where) for feed, where in samples]


def _as_feed(item: Any, inputs: list[Value], index: int) -> dict[str, Any]:
    if isinstance(item, Mapping):
        return dict(item)
    if isinstance(item, np.ndarray):
        return _single_input_feed(item, inputs, f"calibration sample {index}")
    raise InputError(f"calibration sample {index} is a {type(item).__name__}, not a "
                     "{input name: array} dict")


def _single_input_feed(array: np.ndarray, inputs: list[Value], where: str) -> dict[str, Any]:
    if len(inputs) != 1:
        raise InputError(f"{where}: a bare array can feed only a single-input graph; this one "
                         f"takes {_names(inputs)}", hint="give {input name: array} dicts")
    return {inputs[0].name: array}


def _names(inputs: list[Value]) -> str:
    return ", ".join(repr(v.name) for v in inputs)


# -- files -------------------------------------------------------------------------------------

def _load_path(path: Path, inputs: list[Value]) -> list[tuple[dict, str]]:
    if not path.exists():
        raise InputError(f"calibration data {path}: no such file or folder")
    if path.is_dir():
        return _load_dir(path, inputs)
    loader = _FILE_LOADERS.get(path.suffix.lower(), _load_input_list)
    return loader(path, inputs)


def _load_npy_file(path: Path, inputs: list[Value]) -> list[tuple[dict, str]]:
    if len(inputs) != 1:
        raise InputError(f"{path}: a .npy file can feed only a single-input graph; this one takes "
                         f"{_names(inputs)}", hint="use a .npz file (keys = input names) or an input_list")
    array = _read_npy(path)
    value = inputs[0]
    arrays = list(array) if _is_stacked(array, value) else [array]
    if not arrays:
        raise InputError(f"{path}: holds 0 stacked samples for input {value.name!r}")
    return [({value.name: a}, f"{path}" + (f" (sample {i})" if len(arrays) > 1 else ""))
            for i, a in enumerate(arrays)]


def _load_npz_file(path: Path, inputs: list[Value]) -> list[tuple[dict, str]]:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise InputError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})") from None
    by_name = {v.name: v for v in inputs}
    if len(inputs) == 1 and len(arrays) == 1 and inputs[0].name not in arrays:
        arrays = {inputs[0].name: next(iter(arrays.values()))}  # np.savez(f, x) names it arr_0
    unknown = [k for k in arrays if k not in by_name]
    if unknown:
        raise InputError(f"{path}: arrays {unknown} match no graph input; the graph takes "
                         f"{_names(inputs)}", hint="name the .npz arrays after the inputs")
    stacked = {k: _is_stacked(a, by_name[k]) for k, a in arrays.items()}
    if not any(stacked.values()):
        return [(arrays, str(path))]
    if not all(stacked.values()):
        single = [k for k, s in stacked.items() if not s]
        raise InputError(f"{path}: arrays {single} hold one sample while the others are stacked "
                         "samples", hint="stack every input's samples on a new axis 0, or none")
    counts = {k: a.shape[0] for k, a in arrays.items()}
    if len(set(counts.values())) != 1:
        raise InputError(f"{path}: stacked arrays disagree on the sample count: {counts}")
    count = next(iter(counts.values()))
    return [({k: a[i] for k, a in arrays.items()}, f"{path} (sample {i})") for i in range(count)]


def _load_raw_file(path: Path, inputs: list[Value]) -> list[tuple[dict, str]]:
    if len(inputs) != 1:
        raise InputError(f"{path}: a .raw file can feed only a single-input graph; this one takes "
                         f"{_names(inputs)}", hint="use an input_list naming each input's file")
    return [({inputs[0].name: _read_raw(path, inputs[0], str(path))}, str(path))]


def _load_dir(path: Path, inputs: list[Value]) -> list[tuple[dict, str]]:
    files = sorted(p for p in path.iterdir()
                   if p.is_file() and p.suffix.lower() in _DATA_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise QirError(f"calibration folder {path} holds no .npy, .npz or .raw files")
    samples: list[tuple[dict, str]] = []
    for file in files:
        samples.extend(_FILE_LOADERS[file.suffix.lower()](file, inputs))
    return samples


def _load_input_list(path: Path, inputs: list[Value]) -> list[tuple[dict, str]]:
    """A qnn-net-run ``--input_list``: one sample per line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the input list ({exc})",
                         hint="calibration data must be .npy, .npz, a folder or a text input_list") from None
    by_name = {v.name: v for v in inputs}
    sanitized = _sanitized_names(inputs)
    samples = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "%")):
            continue
        where = f"{path}:{lineno}"
        entries = stripped.split()
        named = [":=" in e for e in entries]
        if any(named) and not all(named):
            raise InputError(f"{where}: mixes 'name:=path' and bare path entries",
                             hint="name every input on the line, or none")
        if all(named):
            pairs = [e.split(":=", 1) for e in entries]
            feed_files = {}
            for name, file in pairs:
                value = by_name.get(name) or sanitized.get(name)
                if value is None:
                    raise InputError(f"{where}: no graph input named {name!r}; the graph takes "
                                     f"{_names(inputs)}")
                if value.name in feed_files:
                    raise InputError(f"{where}: input {value.name!r} is given twice")
                feed_files[value.name] = file
        else:
            if len(entries) != len(inputs):
                raise InputError(f"{where}: {len(entries)} files for {len(inputs)} inputs "
                                 f"({_names(inputs)})",
                                 hint="give one file per graph input, in order, or use name:=path")
            feed_files = {v.name: e for v, e in zip(inputs, entries)}
        missing = [v.name for v in inputs if v.name not in feed_files]
        if missing:
            raise InputError(f"{where}: no file for inputs {missing}")
        feed = {name: _read_entry(_resolve(path.parent, file), by_name[name], where)
                for name, file in feed_files.items()}
        samples.append((feed, where))
    return samples


def _sanitized_names(inputs: list[Value]) -> dict[str, Value]:
    """QNN's converter renames inputs ('input:0' -> 'input_0'); accept those names when unique."""
    found: dict[str, list[Value]] = {}
    for v in inputs:
        found.setdefault(re.sub(r"\W", "_", v.name), []).append(v)
    return {name: vs[0] for name, vs in found.items() if len(vs) == 1}


def _resolve(base: Path, file: str) -> Path:
    p = Path(file).expanduser()
    return p if p.is_absolute() else base / p


def _read_entry(path: Path, value: Value, where: str) -> np.ndarray:
    if not path.is_file():
        raise InputError(f"{where}: file {path} for input {value.name!r} does not exist")
    if path.suffix.lower() == ".npy":
        return _read_npy(path, where)
    return _read_raw(path, value, where)


def _read_npy(path: Path, where: str | None = None) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001
        prefix = f"{where}: " if where and where != str(path) else ""
        raise InputError(f"{prefix}{path}: not a readable .npy file ({type(exc).__name__}: {exc})") from None


def _read_raw(path: Path, value: Value, where: str) -> np.ndarray:
    """Raw little-endian data of the input's dtype and (static) shape, as qnn-net-run reads it."""
    t = value.type
    if not isinstance(t, TensorType) or not t.is_static:
        shape = getattr(t, "shape", None)
        raise InputError(f"{where}: input {value.name!r} has shape {list(shape) if shape else shape}; "
                         f".raw file {path.name} needs a fixed shape to be read",
                         hint="give the data as .npy/.npz, or fix the input shape first")
    if t.dtype not in _RAW_DTYPES:
        raise InputError(f"{where}: input {value.name!r} of type {t.dtype.value} cannot be read "
                         f"from a .raw file", hint="give the data as .npy or .npz")
    dtype = t.dtype.numpy
    elements = int(np.prod(t.shape, dtype=np.int64))
    expected = elements * dtype.itemsize
    size = path.stat().st_size
    if size != expected:
        raise InputError(f"{where}: {path.name} holds {size} bytes; input {value.name!r} "
                         f"({t.dtype.value}{list(t.shape)}) needs {expected}",
                         hint="a .raw file holds exactly one sample of the input, little-endian")
    # Read as little-endian bytes of the same width, then view as the (native) dtype.
    raw = np.fromfile(path, dtype=_RAW_DTYPES[t.dtype])
    return raw.astype(raw.dtype.newbyteorder("="), copy=False).view(dtype).reshape(t.shape)


#: Input dtypes a .raw file may hold, with the little-endian storage type read from disk.
_RAW_DTYPES = {DType.FLOAT32: np.dtype("<f4"), DType.FLOAT64: np.dtype("<f8"),
               DType.FLOAT16: np.dtype("<f2"), DType.BFLOAT16: np.dtype("<u2"),
               DType.INT8: np.dtype("i1"), DType.UINT8: np.dtype("u1"), DType.BOOL: np.dtype("u1"),
               DType.INT16: np.dtype("<i2"), DType.UINT16: np.dtype("<u2"),
               DType.INT32: np.dtype("<i4"), DType.UINT32: np.dtype("<u4"),
               DType.INT64: np.dtype("<i8"), DType.UINT64: np.dtype("<u8")}


def _is_stacked(array: np.ndarray, value: Value) -> bool:
    t = value.type
    return isinstance(t, TensorType) and t.shape is not None and array.ndim == len(t.shape) + 1


_FILE_LOADERS = {".npy": _load_npy_file, ".npz": _load_npz_file, ".raw": _load_raw_file}


# -- checks ------------------------------------------------------------------------------------

def _check_feed(feed: dict[str, Any], inputs: list[Value], where: str) -> Feed:
    names = [v.name for v in inputs]
    unknown = [k for k in feed if k not in names]
    if unknown:
        raise InputError(f"{where}: {unknown} match no graph input; the graph takes {_names(inputs)}")
    missing = [n for n in names if n not in feed]
    if missing:
        raise InputError(f"{where}: no data for inputs {missing}")
    bound: dict[str, Any] = {}
    return {v.name: _check_array(feed[v.name], v, where, bound) for v in inputs}


def _check_array(data: Any, value: Value, where: str, bound: dict[str, Any]) -> np.ndarray:
    t = value.type
    if not isinstance(t, TensorType):
        raise InputError(f"{where}: input {value.name!r} is a {t}; calibration feeds only tensors")
    array = np.asarray(data)
    array = _convert_dtype(array, t.dtype, value, where)
    check_input_shape(value.name, t.shape, array.shape, bound, where)
    return array


def _convert_dtype(array: np.ndarray, dtype: DType, value: Value, where: str) -> np.ndarray:
    want = dtype.numpy
    if array.dtype == want:
        return array
    if dtype.is_float and array.dtype == np.float64:
        return array.astype(want)
    if dtype.is_int and array.dtype.kind in "iu" and array.size:
        info = np.iinfo(want)
        if array.min() >= info.min and array.max() <= info.max:
            return array.astype(want)
    elif dtype.is_int and array.dtype.kind in "iu":
        return array.astype(want)
    raise InputError(f"{where}: input {value.name!r} must be {dtype.value} ({want}), got "
                     f"{array.dtype}", hint=f"convert the data with .astype({want.name!r})")
