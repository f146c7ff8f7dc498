"""What the sub-commands share: QNN flag aliases, the MODEL argument, atomic writes, formatting."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import click

from qir.errors import ModelLoadError, OptionError

#: Model file suffixes qirc reads, and what they hold.
MODEL_SUFFIXES = {".onnx": "ONNX", ".qir": "qir text", ".qirb": "qir binary",
                  ".pt2": "PyTorch ExportedProgram", ".tflite": "TFLite", ".keras": "Keras",
                  ".h5": "Keras", ".pb": "TensorFlow frozen graph"}


class AliasedOption(click.Option):
    """An option that also accepts other spellings (QNN's), shown in ``--help`` by its canonical
    names only (DESIGN.md, "Command-line flags")."""

    def __init__(self, param_decls: Sequence[str], aliases: Sequence[str] = (), **kwargs: Any):
        super().__init__(list(param_decls) + list(aliases), **kwargs)
        self.aliases = tuple(aliases)

    def get_help_record(self, ctx: click.Context):
        opts, secondary = self.opts, self.secondary_opts
        self.opts = [o for o in opts if o not in self.aliases]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts, self.secondary_opts = opts, secondary


def model_argument(command: Callable) -> Callable:
    """MODEL, positional or given by QNN's ``--input_network`` / ``-i`` (hidden from --help)."""
    command = click.option("--input_network", "-i", "model_option", hidden=True,
                           type=click.Path(path_type=Path),
                           help="Alias of MODEL (QNN spelling).")(command)
    return click.argument("model", required=False, type=click.Path(path_type=Path))(command)


def resolve_model(model: Path | None, model_option: Path | None) -> Path:
    """The model path from the positional argument or its alias; it must exist."""
    if model is not None and model_option is not None and model != model_option:
        raise click.UsageError(f"MODEL given twice: {model} and --input_network {model_option}")
    path = model or model_option
    if path is None:
        raise click.UsageError("missing MODEL (a .onnx, .qir, .qirb, .pt2, .tflite, .keras or .pb "
                               "file, or a SavedModel directory)")
    if path.is_dir() and not (path / "saved_model.pb").is_file() and not (path / "manifest.json").is_file():
        raise ModelLoadError(f"{path}: a directory, but neither a TensorFlow SavedModel (no "
                             "saved_model.pb) nor a qirc compile artifact (no manifest.json)")
    if not path.exists():
        raise ModelLoadError(f"{path}: no such model file")
    return path


def load_graph(path: Path):
    """A Graph from any model file qir reads (qir.api.as_graph)."""
    from qir.api import as_graph

    return as_graph(str(path))


def input_dim_option(command: Callable) -> Callable:
    """``--input-dim NAME DIMS`` (repeatable), with QNN's ``--input_dim`` and ``-d``."""
    return click.option(
        "--input-dim", "input_dims", cls=AliasedOption, aliases=("--input_dim", "-d"), nargs=2,
        multiple=True, metavar="NAME DIMS",
        help="Fix the dims of input NAME, e.g. --input-dim input 1,3,224,224 (repeatable).")(command)


def calib_option(command: Callable) -> Callable:
    """``--calib DATA`` (QNN's ``--input_list`` spelling too): calibration data."""
    return click.option(
        "--calib", "calib", cls=AliasedOption, aliases=("--input-list", "--input_list"),
        type=click.Path(exists=True, path_type=Path),
        help="Calibration data: a QNN input list, a folder of .npy/.npz/.raw, or a .npy/.npz file.")(command)


def parse_input_dims(pairs: Sequence[tuple[str, str]]) -> dict[str, tuple[int, ...]]:
    """``[("input", "1,3,224,224")]`` → ``{"input": (1, 3, 224, 224)}``."""
    dims: dict[str, tuple[int, ...]] = {}
    for name, text in pairs:
        try:
            shape = tuple(int(d) for d in text.replace("x", ",").split(",") if d.strip() != "")
        except ValueError:
            raise OptionError(f"--input-dim {name} {text}: dims must be integers separated by commas",
                              hint="e.g. --input-dim input 1,3,224,224") from None
        if not shape or any(d < 0 for d in shape):
            raise OptionError(f"--input-dim {name} {text}: give one non-negative integer per dim")
        if name in dims and dims[name] != shape:
            raise OptionError(f"--input-dim {name} given twice with different dims")
        dims[name] = shape
    return dims


def apply_input_dims(graph, pairs: Sequence[tuple[str, str]]):
    """Bind the ``--input-dim`` values into ``graph`` (a no-op when none were given)."""
    dims = parse_input_dims(pairs)
    if dims:
        from qir.ir.shapes import bind_input_dims

        bind_input_dims(graph, dims)
    return graph


# -- atomic writes -------------------------------------------------------------------------

def write_bytes_atomic(path: Path, data: bytes) -> None:
    """OUT is complete or untouched (qir.ir.serialize.write_atomic)."""
    from qir.ir.serialize import write_atomic

    write_atomic(path, data)


# -- formatting ----------------------------------------------------------------------------

def format_type(t: Any) -> str:
    """``f32[N,1,8,8]`` for a tensor type; other types by their own str()."""
    from qir.ir.types import TensorType

    if isinstance(t, TensorType):
        dims = "?" if t.shape is None else ",".join(str(d) for d in t.shape)
        return f"{t.dtype.value}[{dims}]" + ("" if t.quant is None else " (quantized)")
    return "?" if t is None else type(t).__name__


def human(n: int | None, unit: str = "") -> str:
    """1234567 → '1.23 M'; None → 'unknown'."""
    if n is None:
        return "unknown"
    for factor, prefix in ((10**12, "T"), (10**9, "G"), (10**6, "M"), (10**3, "K")):
        if abs(n) >= factor:
            return f"{n / factor:.2f} {prefix}{unit}"
    return f"{n} {unit}".rstrip()


def human_bytes(n: int) -> str:
    for factor, prefix in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if n >= factor:
            return f"{n / factor:.2f} {prefix}"
    return f"{n} B"
