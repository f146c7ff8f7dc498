"""Calibration: run the float graph over the calibration set and keep each tensor's statistics.

``calibrate(graph, data)`` runs the reference interpreter once per sample; its hook folds every
observed tensor into a :class:`~qir.passes.quantize.observers.TensorStats`. The result, a
:class:`CalibrationTable`, holds everything every range algorithm needs, so choosing another
algorithm later never reruns the model.

Runs are cached by the sha256 of the serialized graph, the calibration arrays and the set of
observed values: in memory, and on disk in ``$QIR_CACHE_DIR/calibration`` (default
``~/.cache/qir/calibration``), at most :data:`CACHE_LIMIT_BYTES`, least recently used files
evicted first. A cache file that cannot be read is ignored and rewritten.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

import attrs
import numpy as np

from qir import cache as qir_cache
from qir.errors import ExecutionError, ModelLoadError, QirError
from qir.ir.graph import Graph, Value
from qir.ir.interpreter import Interpreter
from qir.ir.serialize import dumps, write_atomic
from qir.ir.types import DType, TensorType
from qir.passes.quantize.dataset import load_calibration_set
from qir.passes.quantize.observers import DEFAULT_BINS, StatsCollector, TensorStats, compute_range
from qir.passes.cleanup import graph_tree

log = logging.getLogger(__name__)

#: Version of the table file format and of the cache key (bump when TensorStats change).
TABLE_VERSION = 1
_MAGIC = "qir-calibration"

#: Most bytes the on-disk calibration cache may hold; the least recently used files go first.
CACHE_LIMIT_BYTES = 1 << 30

#: Calibration tables kept in memory (most recent first out of an LRU of this size).
MEMORY_CACHE_ENTRIES = 8


@attrs.define(eq=False)
class CalibrationTable:
    """Statistics of the observed tensors (value name -> TensorStats) over ``samples`` runs.

    ``key`` identifies what was calibrated (graph, data, observed values); ``range(name, ...)``
    gives a tensor's clipping range by any algorithm of ``compute_range``.
    """

    stats: dict[str, TensorStats] = attrs.field(factory=dict)
    key: str = ""
    samples: int = 0

    def __getitem__(self, name: str) -> TensorStats:
        try:
            return self.stats[name]
        except KeyError:
            raise QirError(f"tensor {name!r} was not calibrated",
                           hint="calibrate with values=[...] naming it, or check the name") from None

    def __contains__(self, name: object) -> bool:
        return name in self.stats

    def __iter__(self) -> Iterator[str]:
        return iter(self.stats)

    def __len__(self) -> int:
        return len(self.stats)

    def range(self, name: str, algorithm: str = "minmax", **options) -> tuple[float, float]:
        """``compute_range`` of tensor ``name`` (options: bitwidth, symmetric, percentile, momentum)."""
        return compute_range(self[name], algorithm, **options)

    def ranges(self, algorithm: str = "minmax", **options) -> dict[str, tuple[float, float]]:
        """The range of every calibrated tensor by ``algorithm``."""
        return {name: compute_range(stats, algorithm, **options) for name, stats in self.stats.items()}

    def copy(self) -> "CalibrationTable":
        return _from_bytes(_to_bytes(self), "<copy>")

    def save(self, path: str | os.PathLike) -> None:
        """Write the table to ``path`` (an .npz archive, nothing pickled), atomically."""
        write_atomic(Path(path), _to_bytes(self))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CalibrationTable":
        """Read a table written by ``save``; a bad file is a ModelLoadError naming it."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelLoadError(f"{path}: cannot read the calibration table ({exc.strerror or exc})") from None
        return _from_bytes(data, str(path))


# -- calibrate ---------------------------------------------------------------------------------

def calibrate(graph: Graph, dataset: Any, *, values: Iterable[str] | None = None,
              progress: bool = True, cache: bool = True, bins: int = DEFAULT_BINS,
              channel_axis: int | None = None) -> CalibrationTable:
    """Statistics of ``graph``'s tensors over ``dataset`` (anything ``load_calibration_set``
    takes: feed dicts, .npy/.npz files, a folder, a QNN input_list).

    Observes the float tensors that are graph inputs or node outputs of the main graph, or
    the values named in ``values`` (subgraph values and constants may be named too; values
    that turn out not to be float tensors get no entry).
    ``channel_axis`` adds per-channel min/max/sum along that axis; ``bins`` sizes the
    histograms. ``progress`` shows a bar on a terminal; ``cache=False`` always reruns.
    """
    feeds = load_calibration_set(dataset, graph)
    observed = _observed_values(graph, values)
    key = cache_key(graph, feeds, observed, bins=bins, channel_axis=channel_axis)
    if cache:
        hit = _cache_get(key)
        if hit is not None:
            return hit
    table = _run(graph, feeds, observed, key, progress, bins, channel_axis)
    if cache:
        _cache_put(table)
    return table


def _run(graph: Graph, feeds: list[dict[str, np.ndarray]], observed: dict[int, str], key: str,
         progress: bool, bins: int, channel_axis: int | None) -> CalibrationTable:
    collector = StatsCollector(bins=bins, axis=channel_axis)

    def hook(value: Value, array: Any) -> None:
        name = observed.get(id(value))
        if name is not None and isinstance(array, np.ndarray) and _is_float(array.dtype):
            collector.update(name, array)

    interpreter = Interpreter(graph, hook)
    with _progress_bar(len(feeds), progress) as advance:
        for index, feed in enumerate(feeds):
            try:
                interpreter.run(feed)
            except ExecutionError as exc:
                raise ExecutionError(f"calibration sample {index}: {exc.message}", hint=exc.hint) from exc
            advance()
    # Keep the graph's order (inputs, then nodes), not the order values happened to be seen.
    order = {name: i for i, name in enumerate(observed.values())}
    stats = dict(sorted(collector.stats.items(), key=lambda kv: order[kv[0]]))
    return CalibrationTable(stats, key, len(feeds))


def _is_float(dtype: np.dtype) -> bool:
    if dtype.kind == "f":
        return True
    try:
        return DType.from_numpy(dtype).is_float  # bfloat16, float8...: ml_dtypes kinds
    except QirError:
        return False


def _observed_values(graph: Graph, names: Iterable[str] | None) -> dict[int, str]:
    """id(Value) -> name of the values to observe, in graph order."""
    if names is None:
        candidates = list(graph.inputs) + [v for node in graph.nodes for v in node.outputs]
        return {id(v): v.name for v in candidates if _may_be_float(v)}
    wanted = list(dict.fromkeys(names))
    by_name = {v.name: v for g in graph_tree(graph) for v in g.values()}
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise QirError(f"calibration: no values named {unknown} in graph {graph.name!r}",
                       hint="name graph inputs or node outputs (the source model's tensor names)")
    return {id(by_name[n]): n for n in wanted}


def _may_be_float(value: Value) -> bool:
    t = value.type
    if isinstance(t, TensorType):
        return t.dtype.is_float
    return t is None  # unknown type: the hook checks the array itself


class _progress_bar:
    """A rich progress bar on a terminal; nothing otherwise (or when not wanted)."""

    def __init__(self, total: int, wanted: bool):
        self.total, self.wanted, self.progress = total, wanted, None

    def __enter__(self):
        if self.wanted:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            console = Console(stderr=True)
            if console.is_terminal:
                self.progress = Progress(TextColumn("calibrating"), BarColumn(), MofNCompleteColumn(),
                                         TimeRemainingColumn(), console=console, transient=True)
                self.progress.start()
                task = self.progress.add_task("calibrating", total=self.total)
                return lambda: self.progress.advance(task)
        return lambda: None

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()


# -- cache -------------------------------------------------------------------------------------

def cache_key(graph: Graph, feeds: list[dict[str, np.ndarray]], observed: dict[int, str], *,
              bins: int = DEFAULT_BINS, channel_axis: int | None = None) -> str:
    """sha256 of everything a calibration run depends on."""
    h = hashlib.sha256()
    h.update(f"{_MAGIC} v{TABLE_VERSION} bins={bins} axis={channel_axis}\n".encode())
    graph_bytes = dumps(graph)
    h.update(len(graph_bytes).to_bytes(8, "little"))
    h.update(graph_bytes)
    h.update(len(feeds).to_bytes(8, "little"))
    for feed in feeds:
        for name in sorted(feed):
            array = np.ascontiguousarray(feed[name])
            h.update(json.dumps([name, array.dtype.str, list(array.shape)]).encode())
            h.update(array.view(np.uint8).reshape(-1).tobytes() if array.size else b"")
    h.update(json.dumps(list(observed.values())).encode())
    return h.hexdigest()


_memory: "collections.OrderedDict[str, CalibrationTable]" = collections.OrderedDict()


def cache_dir() -> Path:
    """Where calibration tables are cached (qir.cache: ``$QIR_CACHE_DIR/calibration``, else
    ``~/.cache/qir/calibration``)."""
    return qir_cache.cache_dir("calibration")


def clear_memory_cache() -> None:
    """Forget the tables kept in memory (the disk cache stays)."""
    _memory.clear()


def _cache_get(key: str) -> CalibrationTable | None:
    table = _memory.get(key)
    if table is not None:
        _memory.move_to_end(key)
        return table.copy()
    path = cache_dir() / f"{key}.npz"
    try:
        data = path.read_bytes()
    except OSError:
        return None
    try:
        table = _from_bytes(data, str(path))
        if table.key != key:
            raise ModelLoadError(f"{path}: holds the table of another key")
    except QirError as exc:
        # A torn or foreign file: drop it; the caller recalibrates and writes a good one.
        log.warning("ignoring unreadable calibration cache file %s: %s", path, exc.message)
        qir_cache.unlink(path)
        return None
    qir_cache.touch(path)
    _remember(table)
    return table.copy()


def _cache_put(table: CalibrationTable) -> None:
    _remember(table.copy())
    directory = cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        write_atomic(directory / f"{table.key}.npz", _to_bytes(table))
        qir_cache.evict(directory, "*.npz", CACHE_LIMIT_BYTES)
    except (OSError, QirError) as exc:
        # The cache only saves time; an unwritable one must not fail the compile.
        log.warning("cannot write the calibration cache in %s: %s", directory,
                    getattr(exc, "message", exc))


def _remember(table: CalibrationTable) -> None:
    _memory[table.key] = table
    _memory.move_to_end(table.key)
    while len(_memory) > MEMORY_CACHE_ENTRIES:
        _memory.popitem(last=False)


# -- table files -------------------------------------------------------------------------------

def _to_bytes(table: CalibrationTable) -> bytes:
    tensors, arrays = [], {}
    for i, stats in enumerate(table.stats.values()):
        scalars, named = stats.to_state()
        tensors.append(scalars)
        for field, array in named.items():
            arrays[f"t{i}.{field}"] = np.asarray(array)
    meta = {"format": _MAGIC, "version": TABLE_VERSION, "key": table.key, "samples": table.samples,
            "tensors": tensors}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    out = io.BytesIO()
    np.savez(out, **arrays)
    return out.getvalue()


def _from_bytes(data: bytes, where: str) -> CalibrationTable:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        meta = json.loads(arrays.pop("meta").tobytes().decode("utf-8"))
        if meta.get("format") != _MAGIC or meta.get("version") != TABLE_VERSION:
            raise ModelLoadError(f"{where}: not a version-{TABLE_VERSION} qir calibration table")
        stats = {}
        for i, scalars in enumerate(meta["tensors"]):
            prefix = f"t{i}."
            named = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
            tensor = TensorStats.from_state(scalars, named)
            stats[tensor.name] = tensor
        return CalibrationTable(stats, str(meta["key"]), int(meta["samples"]))
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - any malformed file is reported, never a crash
        raise ModelLoadError(f"{where}: not a readable calibration table "
                             f"({type(exc).__name__}: {exc})") from None


