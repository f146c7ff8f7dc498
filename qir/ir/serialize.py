"""Saving and loading graphs: one binary blob, or readable text with a weights sidecar.

Binary (``dumps``/``loads``, ``.qirb`` files), little-endian::

    header   "QIRB" | u16 format version | u16 flags (0) | u64 payload length | sha256(payload)
    payload  u64 text length | textual IR (UTF-8)
             u32 weight count | per weight, in digest order:
                 32-byte sha256 digest | u64 length | zero padding to a 64-byte boundary | bytes

The text is ``print_graph``'s; constants too large to print inline are referenced there by the
sha256 digest of their bytes and stored once each in the weights table (splats, one value
broadcast to a shape, are written in the text as ``splat <value>`` and never stored). Text files (``.qir``)
keep that table in ``<file>.weights.npz`` beside them (numeric arrays as themselves, other
dtypes and strings as uint8 bytes; nothing pickled), written only when there are such weights.

Output is deterministic (same graph → same bytes); writes are atomic (temp file + rename);
a bad magic, version, length or checksum is a ModelLoadError, never a crash.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from qir.errors import ModelLoadError, QirError
from qir.ir.graph import Graph
from qir.ir.parser import parse_graph
from qir.ir.printer import print_graph, raw_bytes

MAGIC = b"QIRB"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<4sHHQ32s")
_ALIGN = 64
#: Suffix of the weights file written beside a ``.qir`` text file.
SIDECAR_SUFFIX = ".weights.npz"


# -- binary --------------------------------------------------------------------------------

def dumps(graph: Graph) -> bytes:
    """The graph and all its weights as one deterministic binary blob."""
    weights: dict[str, np.ndarray] = {}
    text = print_graph(graph, weights).encode("utf-8")
    out = io.BytesIO()
    out.write(struct.pack("<Q", len(text)))
    out.write(text)
    out.write(struct.pack("<I", len(weights)))
    for digest in sorted(weights):
        data = raw_bytes(weights[digest])
        out.write(bytes.fromhex(digest.split(":", 1)[1]))
        out.write(struct.pack("<Q", data.size))
        out.write(b"\0" * (-(_HEADER.size + out.tell()) % _ALIGN))  # aligned arrays once loaded
        out.write(data)
    payload = out.getvalue()
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, 0, len(payload), hashlib.sha256(payload).digest())
    return header + payload


def loads(data: bytes | bytearray | memoryview, *, source: str = "<bytes>") -> Graph:
    """A graph from ``dumps``' bytes; anything malformed raises ModelLoadError naming ``source``."""
    if len(data) < _HEADER.size or bytes(data[:4]) != MAGIC:
        raise ModelLoadError(f"{source}: not a qir binary graph (it does not start with {MAGIC!r})",
                             hint="binary graphs come from qir.ir.serialize.dumps / save(…, 'x.qirb')")
    magic, version, flags, length, checksum = _HEADER.unpack_from(data, 0)
    if version != FORMAT_VERSION:
        raise ModelLoadError(f"{source}: qir binary format version {version}; this qir reads version "
                             f"{FORMAT_VERSION}", hint="re-save the graph with this version of qir")
    if len(data) - _HEADER.size != length:
        raise ModelLoadError(f"{source}: the qir binary graph is {len(data) - _HEADER.size} bytes after its "
                             f"header, its header says {length} (truncated or padded file)")
    # One writable copy: the arrays are views into it, so they are writable, aligned and owned.
    buffer = bytearray(data)
    view = memoryview(buffer)
    if hashlib.sha256(view[_HEADER.size:]).digest() != checksum:
        raise ModelLoadError(f"{source}: the qir binary graph is corrupt (sha256 checksum mismatch)")
    try:
        text, weights = _read_payload(view, _HEADER.size)
    except (struct.error, ValueError) as exc:
        raise ModelLoadError(f"{source}: the qir binary graph is malformed ({exc})") from None
    return parse_graph(text, weights, source=source)


def _read_payload(view: memoryview, pos: int) -> tuple[str, dict[str, memoryview]]:
    (text_len,) = struct.unpack_from("<Q", view, pos)
    pos += 8
    if pos + text_len > len(view):
        raise ValueError("text runs past the end")
    text = bytes(view[pos:pos + text_len]).decode("utf-8")
    pos += text_len
    (count,) = struct.unpack_from("<I", view, pos)
    pos += 4
    weights = {}
    for _ in range(count):
        digest = bytes(view[pos:pos + 32]).hex()
        (size,) = struct.unpack_from("<Q", view, pos + 32)
        pos += 40
        pos += -pos % _ALIGN
        if pos + size > len(view):
            raise ValueError(f"weight sha256:{digest[:12]}… runs past the end")
        weights["sha256:" + digest] = view[pos:pos + size]
        pos += size
    if pos != len(view):
        raise ValueError(f"{len(view) - pos} unexpected bytes after the weights")
    return text, weights


# -- files ---------------------------------------------------------------------------------

def save(graph: Graph, path: str | os.PathLike) -> None:
    """Write ``graph`` to ``path``: ``.qirb`` binary, or ``.qir`` text + ``<path>.weights.npz``."""
    path = Path(path)
    if path.suffix == ".qirb":
        write_atomic(path, dumps(graph))
    elif path.suffix == ".qir":
        weights: dict[str, np.ndarray] = {}
        text = print_graph(graph, weights).encode("utf-8")
        sidecar = sidecar_path(path)
        if weights:
            write_atomic(sidecar, _npz_bytes(weights))
        elif sidecar.exists():  # a stale table from an earlier save would only mislead
            sidecar.unlink()
        write_atomic(path, text)  # last: the text is what makes the pair visible
    else:
        raise QirError(f"{path}: unknown graph file extension {path.suffix!r}",
                       hint="use .qir (text + weights sidecar) or .qirb (one binary file)")


def load(path: str | os.PathLike) -> Graph:
    """Read a graph written by ``save`` (binary when the file starts with the magic, else text)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read the graph file ({exc.strerror or exc})") from None
    if data[:4] == MAGIC or path.suffix == ".qirb":
        return loads(data, source=str(path))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModelLoadError(f"{path}: not a textual qir graph (not UTF-8: {exc.reason} at byte {exc.start})") \
            from None
    sidecar = sidecar_path(path)
    weights = read_weights(sidecar) if sidecar.exists() else None
    return parse_graph(text, weights, source=str(path))


def sidecar_path(path: str | os.PathLike) -> Path:
    """Where the weights of the text file ``path`` live: ``<path>.weights.npz``."""
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def write_weights(weights: dict[str, np.ndarray], path: str | os.PathLike) -> None:
    """Write a digest → array table as a deterministic, pickle-free ``.npz`` (atomically)."""
    write_atomic(Path(path), _npz_bytes(weights))


def read_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A digest → array table from a ``.weights.npz``, checking every entry against its digest."""
    path = Path(path)
    weights = {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            for key in npz.files:
                array = npz[key]
                if not key.startswith("sha256:"):
                    raise ModelLoadError(f"{path}: entry {key!r} is not a sha256 digest")
                if hashlib.sha256(raw_bytes(np.ascontiguousarray(array))).hexdigest() != key[7:]:
                    raise ModelLoadError(f"{path}: entry {key[:19]}… does not match its digest (corrupt file)")
                weights[key] = array
    except QirError:
        raise
    except Exception as exc:  # zip/npy errors, object arrays refused without pickle
        raise ModelLoadError(f"{path}: not a readable weights file ({type(exc).__name__}: {exc})") from None
    return weights


def _npz_bytes(weights: dict[str, np.ndarray]) -> bytes:
    """An .npz of the table, with fixed zip timestamps so that the bytes are deterministic."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for digest in sorted(weights):
            array = _storable(weights[digest])
            npy = io.BytesIO()
            np.lib.format.write_array(npy, array, allow_pickle=False)
            info = zipfile.ZipInfo(digest + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, npy.getvalue())
    return out.getvalue()


def _storable(array: np.ndarray) -> np.ndarray:
    """The array itself when .npy can hold its dtype natively, else its raw bytes as uint8."""
    array = np.ascontiguousarray(array)
    if array.dtype.kind in "biufc" and array.dtype.isnative:
        return array
    return raw_bytes(array)


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path``, then rename it over ``path``: readers see
    the old file or the new one, never half of one. The one atomic writer of qir."""
    path = Path(path)
    if not path.parent.is_dir():
        raise QirError(f"{path}: cannot write: the folder {path.parent} does not exist",
                       hint="create it first")
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise QirError(f"{path}: cannot write ({exc.strerror or exc})",
                       hint="check that the folder exists and is writable") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise QirError(f"{path}: cannot write ({exc.strerror or exc})") from None
        raise
