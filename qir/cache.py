"""qir's on-disk caches (calibration tables, compiled kernels): where they live and how they
stay under their size caps.

Each kind of cache has a folder ``$QIR_CACHE_DIR/<kind>``, else
``$XDG_CACHE_HOME/qir/<kind>`` (``~/.cache/qir/<kind>``). Readers ``touch`` what they use;
writers ``evict`` the least recently used files beyond the cap. A cache only saves time, so
these never raise on I/O errors.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence


def cache_dir(kind: str) -> Path:
    """The folder of cache ``kind`` (it may not exist yet)."""
    root = os.environ.get("QIR_CACHE_DIR")
    if root:
        return Path(root).expanduser() / kind
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "qir" / kind


def touch(path: Path) -> None:
    """Mark ``path`` as just used (least-recently-used order is modification time)."""
    try:
        os.utime(path)
    except OSError:
        pass


def unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def evict(directory: Path, pattern: str, limit: int, companions: Sequence[str] = ()) -> None:
    """Delete the least recently used ``pattern`` files of ``directory`` (and their files with
    the ``companions`` suffixes) until those files hold at most ``limit`` bytes."""
    entries = []
    for path in directory.glob(pattern):
        try:
            st = path.stat()
        except OSError:
            continue
        entries.append((st.st_mtime_ns, path.name, st.st_size, path))
    entries.sort()
    total = sum(e[2] for e in entries)
    for _, _, size, path in entries:
        if total <= limit:
            break
        for victim in (path, *(path.with_suffix(s) for s in companions)):
            unlink(victim)
        total -= size
