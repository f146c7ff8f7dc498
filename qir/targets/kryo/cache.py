"""The on-disk compile cache: object files keyed by sha256 of (graph, target, options, host).

Location: ``$QIR_CACHE_DIR/kryo`` or ``~/.cache/qir/kryo`` (qir.cache). Size cap: ``$QIR_CACHE_MAX_BYTES``
(default 512 MiB); after a write, the least recently used entries beyond the cap are removed.
Writes are atomic (temp file + rename), so a crash never leaves a half object behind; an entry
that fails to read is treated as a miss.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from qir import cache as qir_cache
from qir.errors import QirError
from qir.ir.serialize import write_atomic

DEFAULT_CAP = 512 * 2**20


def cache_dir() -> Path:
    """Where kryo keeps compiled objects."""
    return qir_cache.cache_dir("kryo")


def cache_key(graph_bytes: bytes, *parts: object) -> str:
    """sha256 over the serialized graph and every other input of code generation."""
    h = hashlib.sha256(graph_bytes)
    h.update(json.dumps([str(p) for p in parts]).encode())
    return h.hexdigest()


def get(key: str) -> tuple[bytes, list[str]] | None:
    """The cached (object, segment names) for ``key``, or None."""
    path = cache_dir() / f"{key}.o"
    try:
        data = path.read_bytes()
        meta = json.loads((cache_dir() / f"{key}.json").read_text())
    except (OSError, ValueError):
        return None
    if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        return None
    qir_cache.touch(path)
    return data, list(meta["segments"])


def put(key: str, obj: bytes, segments: list[str]) -> None:
    """Store an entry atomically, then trim the cache to its size cap. Never raises on I/O."""
    d = cache_dir()
    try:
        d.mkdir(parents=True, exist_ok=True)
        write_atomic(d / f"{key}.json", json.dumps({"sha256": hashlib.sha256(obj).hexdigest(),
                                                    "segments": segments}).encode())
        write_atomic(d / f"{key}.o", obj)
        trim(int(os.environ.get("QIR_CACHE_MAX_BYTES", DEFAULT_CAP)))
    except (OSError, QirError):
        pass


def trim(cap: int) -> None:
    """Remove least recently used objects (and their metadata) until the cache holds at most
    ``cap`` bytes of objects."""
    qir_cache.evict(cache_dir(), "*.o", cap, companions=(".json",))
