"""Compiled-model artifacts: ``CompiledModel.save(dir)`` and ``qir.load(dir)``.

The folder has the layout QNN users know (DESIGN.md, "Artifacts and runtime")::

    out/
      context_binaries/<target>_context.bin   the target's blob in a header (see below)
      quantization_config.json                encodings, when the graph is quantized
      input_specs.json                        names, shapes, dtypes, quantization of the I/O
      manifest.json                           qir version, target, options, sha256 of every file
      model.qirb                              the compiled graph (qir.ir.serialize), to inspect
                                              or re-compile

A context binary is, little-endian::

    "QCTX" | u16 format version | u16 target-name length | u16 qir-version length | u16 flags (0)
    | u64 payload length | sha256(payload) | target name (UTF-8) | qir version (UTF-8) | payload

Builds are deterministic: the same model and options give byte-identical files (no timestamps
or paths in them; JSON keys sorted). Writes are atomic: everything goes to a temporary folder
beside ``out`` that replaces ``out`` only once complete. Loading checks the manifest's own
checksum, every file's sha256, the context binary's magic, versions and checksum, and that the
I/O specs agree with the graph; any mismatch is a ModelLoadError naming the file, never a crash.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from qir.errors import ModelLoadError, OptionError, QirError
from qir.ir import serialize
from qir.ir.graph import Graph
from qir.ir.types import TensorType
from qir.targets.base import CompileOptions, get_target
from qir.version import __version__

if TYPE_CHECKING:
    from qir.runtime.model import CompiledModel, TensorSpec

#: What ``manifest.json`` says the folder is, and the version of this layout.
ARTIFACT_FORMAT = "qir-artifact"
ARTIFACT_VERSION = 1

CONTEXT_MAGIC = b"QCTX"
CONTEXT_VERSION = 1
_CONTEXT_HEADER = struct.Struct("<4sHHHHQ32s")

MANIFEST = "manifest.json"
INPUT_SPECS = "input_specs.json"
ENCODINGS = "quantization_config.json"
GRAPH = "model.qirb"
CONTEXT_DIR = "context_binaries"
LIBRARY = "model.so"  # kryo only, on request: a standalone library (qir.targets.kryo.library)
LIBRARY_HEADER = "model_abi.h"

#: What ``save`` records as the creator when the caller does not say.
DEFAULT_CREATOR = "qir.CompiledModel.save"


def context_path(target: str) -> str:
    """The context binary of ``target``, relative to the artifact folder."""
    return f"{CONTEXT_DIR}/{target}_context.bin"


def is_artifact(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder holding a ``manifest.json`` (a saved CompiledModel)."""
    return (Path(path) / MANIFEST).is_file()


# -- context binaries ------------------------------------------------------------------------

def wrap_context(target: str, payload: bytes) -> bytes:
    """The target's ``payload`` behind a header: magic, format version, target, qir version and
    the sha256 of the payload."""
    name, version = target.encode("utf-8"), __version__.encode("utf-8")
    header = _CONTEXT_HEADER.pack(CONTEXT_MAGIC, CONTEXT_VERSION, len(name), len(version), 0,
                                  len(payload), hashlib.sha256(payload).digest())
    return header + name + version + payload


@attrs.frozen
class ContextBinary:
    """A context binary's header fields and payload (what ``unwrap_context`` read)."""

    target: str
    qir_version: str
    payload: bytes


def unwrap_context(data: bytes, *, source: str = "<bytes>") -> ContextBinary:
    """Check and split a context binary; anything malformed is a ModelLoadError naming ``source``."""
    if len(data) < _CONTEXT_HEADER.size or data[:4] != CONTEXT_MAGIC:
        raise ModelLoadError(f"{source}: not a qir context binary (it does not start with "
                             f"{CONTEXT_MAGIC!r})", hint="context binaries come from qirc compile")
    _, version, name_len, ver_len, _flags, length, checksum = _CONTEXT_HEADER.unpack_from(data)
    if version != CONTEXT_VERSION:
        raise ModelLoadError(f"{source}: context binary format version {version}; this qir reads "
                             f"version {CONTEXT_VERSION}", hint="recompile the model with this qir")
    start = _CONTEXT_HEADER.size + name_len + ver_len
    if len(data) - start != length:
        raise ModelLoadError(f"{source}: the payload is {len(data) - start} bytes, the header says "
                             f"{length} (truncated or padded file)")
    payload = data[start:]
    if hashlib.sha256(payload).digest() != checksum:
        raise ModelLoadError(f"{source}: the context binary is corrupt (sha256 checksum mismatch)")
    try:
        target = data[_CONTEXT_HEADER.size:_CONTEXT_HEADER.size + name_len].decode("utf-8")
        qir_version = data[_CONTEXT_HEADER.size + name_len:start].decode("utf-8")
    except UnicodeDecodeError:
        raise ModelLoadError(f"{source}: the context binary's header is corrupt") from None
    return ContextBinary(target, qir_version, payload)


# -- specs -----------------------------------------------------------------------------------

def spec_json(spec: "TensorSpec") -> dict[str, Any]:
    """One input/output as JSON: name, dtype, shape (symbolic dims as names), quantization.

    ``dtype`` is what the compiled graph stores; quantized tensors are still fed and returned as
    float32 by CompiledModel.run, so those entries say so in ``io_dtype``.
    """
    t = spec.type
    if not isinstance(t, TensorType):
        return {"name": spec.name, "type": str(t), "dtype": None, "shape": None,
                "io_dtype": None, "quantization": None}
    q = t.quant
    quant = None if q is None else {"scale": list(q.scale), "zero_point": list(q.zero_point),
                                    "bitwidth": q.bitwidth, "signed": q.signed, "axis": q.axis}
    return {"name": spec.name, "type": str(t), "dtype": t.dtype.value,
            "shape": None if t.shape is None else list(t.shape),
            "io_dtype": "f32" if q is not None else t.dtype.value, "quantization": quant}


def specs_json(model: "CompiledModel") -> dict[str, Any]:
    return {"inputs": [spec_json(s) for s in model.inputs],
            "outputs": [spec_json(s) for s in model.outputs]}


def _dump_json(doc: Any) -> bytes:
    try:
        return (json.dumps(doc, indent=2, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")
    except ValueError as exc:  # a NaN or infinite scale cannot be stored
        raise QirError(f"cannot write the artifact: a value JSON cannot store ({exc})") from None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest_digest(manifest: dict[str, Any]) -> str:
    """The manifest's own checksum: sha256 of its canonical JSON without the ``sha256`` key."""
    body = {k: v for k, v in manifest.items() if k != "sha256"}
    return _sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8"))


# -- saving ----------------------------------------------------------------------------------

def _is_quantized(graph: Graph) -> bool:
    return any(isinstance(v.type, TensorType) and v.type.quant is not None for v in graph.values())


def library_files(model: "CompiledModel", arch: str, workdir: Path) -> dict[str, bytes]:
    """``model.so`` (the kryo model library with the C ABI of ``model_abi.h``, built for ``arch``)
    and that header."""
    if model.target != "kryo":
        raise OptionError(f"a model library is built by target kryo, not {model.target!r}",
                          hint="qirc compile MODEL --target kryo --arch aarch64 -o OUT")
    from qir.targets.kryo.library import HEADER, build_model_library

    so = build_model_library(model.graph, workdir / LIBRARY, arch=arch)
    data = so.read_bytes()
    so.unlink()
    return {LIBRARY: data, LIBRARY_HEADER: HEADER.read_bytes()}


def artifact_files(model: "CompiledModel", *, encodings_dir: Path,
                   library_arch: str | None = None) -> dict[str, bytes]:
    """Every file of the artifact but the manifest: relative path → bytes."""
    files = {context_path(model.target): wrap_context(model.target, bytes(model.blob)),
             INPUT_SPECS: _dump_json(specs_json(model)),
             GRAPH: serialize.dumps(model.graph)}
    if _is_quantized(model.graph):
        from qir.passes.quantize import dump_encodings

        path = encodings_dir / ENCODINGS
        dump_encodings(model.graph, path)
        files[ENCODINGS] = path.read_bytes()
    if library_arch is not None:
        files.update(library_files(model, library_arch, encodings_dir))
    return files


def build_manifest(model: "CompiledModel", files: dict[str, bytes], created_by: str) -> dict[str, Any]:
    """qir version, target, options, quantized or not, the creator and every file's sha256."""
    manifest = {"format": ARTIFACT_FORMAT, "format_version": ARTIFACT_VERSION,
                "qir_version": __version__, "target": model.target,
                "options": attrs.asdict(model.options), "quantized": _is_quantized(model.graph),
                "created_by": created_by,
                "files": {name: {"sha256": _sha256(data), "size": len(data)}
                          for name, data in sorted(files.items())}}
    manifest["sha256"] = manifest_digest(manifest)
    return manifest


def save_artifact(model: "CompiledModel", path: str | os.PathLike, *,
                  created_by: str | None = None, library_arch: str | None = None) -> Path:
    """Write ``model`` as an artifact folder at ``path`` (atomically; see the module docstring).
    ``library_arch`` (kryo): also write ``model.so`` for that architecture and ``model_abi.h``.

    An existing ``path`` is replaced only once the new folder is complete, and only when it is
    empty or itself an artifact (a folder with a manifest.json), so that no user files are lost.
    """
    out = Path(os.path.abspath(path))  # "." or "out/" name the folder itself
    _check_replaceable(out)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir()  # not mkdtemp: the folder gets the user's usual permissions (umask), not 0700
    try:
        files = artifact_files(model, encodings_dir=tmp, library_arch=library_arch)
        files[MANIFEST] = _dump_json(build_manifest(model, files, created_by or DEFAULT_CREATOR))
        for name, data in files.items():
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        _publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _check_replaceable(out: Path) -> None:
    parent = out.parent
    if not parent.is_dir():
        raise OptionError(f"{out}: the folder {parent} does not exist", hint="create it first")
    if out.exists() or out.is_symlink():
        if not out.is_dir() or out.is_symlink():
            raise OptionError(f"{out}: exists and is not a folder; the artifact is a folder",
                              hint="choose another output path")
        if any(out.iterdir()) and not is_artifact(out):
            raise OptionError(f"{out}: a folder that is not a qir artifact (no {MANIFEST}); "
                              "refusing to replace it", hint="choose a new or empty folder")


def _publish(tmp: Path, out: Path) -> None:
    """Rename the finished folder ``tmp`` to ``out``, moving an old ``out`` aside first."""
    if not out.exists():
        os.rename(tmp, out)
        return
    old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)  # put the previous artifact back
        raise
    shutil.rmtree(old, ignore_errors=True)


# -- loading ---------------------------------------------------------------------------------

def _read(root: Path, name: str) -> bytes:
    path = root / name
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: missing from the artifact",
                             hint="the folder is incomplete; recompile it with qirc compile") from None
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read it ({exc.strerror or exc})") from None


def read_manifest(root: Path) -> dict[str, Any]:
    """The checked manifest of the artifact folder ``root``."""
    path = root / MANIFEST
    if not root.is_dir():
        raise ModelLoadError(f"{root}: no such artifact folder")
    try:
        manifest = json.loads(_read(root, MANIFEST).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != ARTIFACT_FORMAT:
        raise ModelLoadError(f"{path}: not a qir artifact manifest (no \"format\": \"{ARTIFACT_FORMAT}\")")
    if manifest.get("sha256") != manifest_digest(manifest):
        raise ModelLoadError(f"{path}: the manifest is corrupt (its sha256 does not match its content)")
    if manifest.get("format_version") != ARTIFACT_VERSION:
        raise ModelLoadError(f"{path}: artifact format version {manifest.get('format_version')!r}; "
                             f"this qir reads version {ARTIFACT_VERSION}",
                             hint="recompile the model with this qir (qirc compile)")
    files = manifest.get("files")
    target = manifest.get("target")
    if not isinstance(files, dict) or not isinstance(target, str) or \
            not isinstance(manifest.get("options"), dict):
        raise ModelLoadError(f"{path}: the manifest lacks its files, target or options")
    required = [GRAPH, INPUT_SPECS, context_path(target)]
    unlisted = [name for name in required if name not in files]
    if unlisted:
        raise ModelLoadError(f"{path}: the manifest does not list {', '.join(unlisted)}")
    return manifest


def _checked_files(root: Path, manifest: dict[str, Any]) -> dict[str, bytes]:
    """Every file the manifest lists, after checking its sha256."""
    files = {}
    for name, entry in sorted(manifest["files"].items()):
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ModelLoadError(f"{root / MANIFEST}: lists a file outside the artifact: {name!r}")
        data = _read(root, name)
        if not isinstance(entry, dict) or _sha256(data) != entry.get("sha256"):
            raise ModelLoadError(f"{root / name}: sha256 mismatch with {MANIFEST} (corrupt or "
                                 "edited file)", hint="recompile the model with qirc compile")
        files[name] = data
    return files


def load_artifact(path: str | os.PathLike, *, num_threads: int | None = None) -> "CompiledModel":
    """A CompiledModel from an artifact folder written by ``save_artifact``.

    ``num_threads`` overrides the thread count the model was compiled with.
    """
    from qir.runtime.model import CompiledModel

    root = Path(path)
    manifest = read_manifest(root)
    files = _checked_files(root, manifest)
    name = manifest["target"]
    ctx_name = context_path(name)
    ctx_path = root / ctx_name
    context = unwrap_context(files[ctx_name], source=str(ctx_path))
    if context.target != name:
        raise ModelLoadError(f"{ctx_path}: compiled for target {context.target!r}, but "
                             f"{MANIFEST} says {name!r}")
    if context.qir_version != __version__:
        raise ModelLoadError(f"{ctx_path}: compiled by qir {context.qir_version}; this is qir "
                             f"{__version__}", hint=f"recompile it: qirc compile {root / GRAPH} "
                                                    f"--target {name} -o {root}")
    options = _options(manifest["options"], num_threads, root / MANIFEST)
    try:
        target = get_target(name)
    except QirError as exc:
        raise ModelLoadError(f"{root / MANIFEST}: {exc.message}",
                             hint="install the plugin that provides this target") from None
    graph = serialize.loads(files[GRAPH], source=str(root / GRAPH))
    try:
        executable = target.load(context.payload, options)
    except Exception as exc:  # whatever the target raises, the user learns which file failed
        message = exc.message if isinstance(exc, QirError) else f"{type(exc).__name__}: {exc}"
        raise ModelLoadError(f"{ctx_path}: target {name!r} cannot load it ({message})") from None
    model = CompiledModel(graph, name, context.payload, executable, options)
    if _dump_json(specs_json(model)) != files[INPUT_SPECS]:
        raise ModelLoadError(f"{root / INPUT_SPECS}: does not match the inputs/outputs of "
                             f"{GRAPH}", hint="recompile the model with qirc compile")
    return model


def _options(saved: dict[str, Any], num_threads: int | None, source: Path) -> CompileOptions:
    values = dict(saved)
    if num_threads is not None:
        values["num_threads"] = num_threads
    try:
        return CompileOptions(**values)
    except TypeError as exc:
        raise ModelLoadError(f"{source}: options this qir does not know ({exc})",
                             hint="recompile the model with this qir") from None
    except OptionError as exc:
        if num_threads is not None:
            raise
        raise ModelLoadError(f"{source}: bad options ({exc.message})") from None
