"""Guards that keep sgma-batch from destroying or double-writing what it does not own.

* :func:`check_output_target`: the one check before any store is created or replaced (``run``,
  ``reprocess``, ``chips --overwrite``). sgma-batch only ever replaces a store of the kind it is about
  to write; it refuses an empty path, ``.``, ``~``, the working directory or its parents, a mount point,
  a symlink, a file, and a non-empty folder that is not such a store (:class:`UnsafeOutputError`, 44).
* :func:`run_lock`: the run lock of a store (``<store>.sgma-lock``, the same file ``reprocess`` takes),
  reentrant for the process that holds it; ``break_lock`` removes only a lock whose owner is dead (same
  host, pid gone, or an unreadable lock file) unless ``force``.
* :func:`probe_ray_address`: a bounded TCP probe of a Ray address before ``ray.init``, which would
  otherwise retry a dead address for minutes.

No heavy imports: the CLI calls these before it loads zarr, xarray or Ray.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from sgma_batch.errors import ClusterUnreachableError, StoreLockedError, UnsafeOutputError

log = logging.getLogger(__name__)

__all__ = [
    "CLUSTER_CONNECT_TIMEOUT_S",
    "StoreKind",
    "check_output_target",
    "probe_ray_address",
    "run_lock",
    "store_kind",
]

StoreKind = Literal["mosaic", "chips"]

#: Seconds a run waits for ``ray.init`` to connect before it gives up (exit 5); a local Ray starts in 3-10 s.
CLUSTER_CONNECT_TIMEOUT_S = 120.0
#: Seconds of the TCP probe of an explicit ``host:port`` Ray address.
PROBE_TIMEOUT_S = 5.0
#: Metadata files are tiny; a bigger one is not a store's.
_MAX_META_BYTES = 1 << 20

_CHIP_FORMAT = "sgma-chips-v1"  # sgma_batch.chips.CHIP_FORMAT (chips imports zarr; this module must not)
_KIND_WORDS = {"mosaic": "sgma-batch mosaic store", "chips": "sgma-batch chip store"}


def _root_attrs(path: Path) -> dict | None:
    """The root group attributes of a Zarr v3 or v2 store at ``path``, or None if it is not one."""
    for meta, key in (("zarr.json", "attributes"), (".zattrs", None)):
        f = path / meta
        try:
            if f.is_symlink() or not f.is_file() or f.stat().st_size > _MAX_META_BYTES:
                continue
            doc = json.loads(f.read_bytes())
        except (OSError, ValueError, RecursionError):
            continue
        if not isinstance(doc, dict):
            continue
        attrs = doc.get(key, {}) if key else doc
        if isinstance(attrs, dict):
            return attrs
    return None


def store_kind(path: str | Path) -> StoreKind | None:
    """Which kind of sgma-batch store ``path`` holds (from its root attributes), or None."""
    attrs = _root_attrs(Path(path))
    if attrs is None:
        return None
    if "sgma:grid" in attrs:
        return "mosaic"
    if attrs.get("format") == _CHIP_FORMAT:
        return "chips"
    return None


def _protected(resolved: Path) -> str | None:
    """Why ``resolved`` must never be replaced: the root, home, the working directory or their parents."""
    cwd = Path.cwd().resolve()
    home = Path.home().resolve()
    if resolved == Path(resolved.anchor):
        return "the file-system root"
    if resolved == home or resolved in home.parents:
        return "your home directory" if resolved == home else "a parent of your home directory"
    if resolved == cwd or resolved in cwd.parents:
        return "the working directory" if resolved == cwd else "a parent of the working directory"
    return None


def check_output_target(path: str | Path, *, kind: StoreKind, replace: bool = False, flag: str = "--out") -> Path:
    """Check that a store of ``kind`` may be created (or, with ``replace``, replaced) at ``path``.

    Allowed: a path that does not exist yet, an empty folder, or a folder that holds a store of the same
    kind (a rerun updates it; ``replace`` deletes and rewrites it). Everything else raises
    :class:`UnsafeOutputError` (exit 44) with a one-line message, before anything is touched.

    Returns:
        The path, unchanged but for ``~`` expansion.
    """
    text = str(path)
    if not text.strip():
        raise UnsafeOutputError(f"{flag} is empty; give a new folder name such as {flag} map.zarr")
    if "://" in text and not text.startswith("file://"):
        _check_object_target(text, kind=kind, replace=replace, flag=flag)
        return text  # type: ignore[return-value]
    p = Path(text).expanduser()
    if text.strip() in (".", "..", "~", "/") or text.rstrip("/") in ("", ".", ".."):
        raise UnsafeOutputError(f"{flag} {text!r} names a folder sgma-batch will not write a store into; "
                                f"give a new folder such as {flag} map.zarr")
    if p.is_symlink():
        raise UnsafeOutputError(f"{flag} {text} is a symbolic link; give the real path of the store")
    try:
        resolved = p.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop in a parent
        raise UnsafeOutputError(f"{flag} {text} cannot be resolved ({exc}); give another path") from None
    why = _protected(resolved)
    if why is not None:
        raise UnsafeOutputError(f"{flag} {text} is {why}; give a new folder such as {flag} map.zarr")
    if not p.exists():
        return p
    if not p.is_dir():
        raise UnsafeOutputError(f"{flag} {text} is a file, not a store; remove it or give another path")
    if os.path.ismount(p):
        raise UnsafeOutputError(f"{flag} {text} is a mount point; write the store into a new folder inside it")
    try:
        empty = not any(p.iterdir())
    except OSError as exc:
        raise UnsafeOutputError(f"{flag} {text} cannot be listed ({exc.strerror}); give another path") from None
    if empty:
        return p
    found = store_kind(p)
    if found == kind:
        return p
    what = f"a {_KIND_WORDS[found]}" if found else "a folder with files sgma-batch did not write"
    action = "replace" if replace else "write into"
    raise UnsafeOutputError(
        f"{flag} {text} holds {what}; sgma-batch will not {action} it: give a new path or remove it yourself"
    )


def _check_object_target(url: str, *, kind: StoreKind, replace: bool, flag: str) -> None:
    """The same rule for an object-storage prefix: empty, or a store of ``kind`` (from its zarr.json)."""
    from sgma_batch import storage

    loc = storage.location(url)
    if not storage.has_children(loc):
        return
    found: StoreKind | None = None
    try:
        doc = json.loads(storage.read_bytes(storage.join(loc, "zarr.json"))[:_MAX_META_BYTES])
        attrs = doc.get("attributes", {}) if isinstance(doc, dict) else {}
        found = "mosaic" if "sgma:grid" in attrs else "chips" if attrs.get("format") == _CHIP_FORMAT else None
    except (OSError, ValueError, RecursionError):
        found = None
    if found == kind:
        return
    what = f"a {_KIND_WORDS[found]}" if found else "objects sgma-batch did not write"
    raise UnsafeOutputError(f"{flag} {url} holds {what}; sgma-batch will not {'replace' if replace else 'write into'} "
                            "it: give a new prefix or remove it yourself")


# -- the run lock ----------------------------------------------------------------------------------------
def _held_by_us(holder: object) -> bool:
    return getattr(holder, "pid", None) == os.getpid() and getattr(holder, "host", None) == socket.gethostname()


def owner_dead(holder: object) -> bool:
    """True when the lock's owner is known to be gone: this host and no such pid, or an unreadable lock."""
    from sgma_batch.reprocess import _pid_alive

    pid = getattr(holder, "pid", -1)
    if not isinstance(pid, int) or pid <= 0:
        return True  # an unreadable lock file names no owner
    if getattr(holder, "host", None) != socket.gethostname():
        return False  # another host: cannot tell, so alive
    return not _pid_alive(pid)


def check_break(store: str | Path, holder: object, *, force: bool) -> None:
    """Refuse to break a lock whose owner may be alive, unless ``force`` (raises StoreLockedError, 42)."""
    if force or owner_dead(holder):
        return
    desc = holder.describe() if hasattr(holder, "describe") else "held"
    raise StoreLockedError(
        f"store {store} is locked, {desc}, and that process is alive (or on another host); "
        "--break-lock only removes a dead job's lock: wait for it, or add --force if you know it is gone"
    )


@contextmanager
def run_lock(store: str | Path, *, note: str = "", break_lock: bool = False, force: bool = False) -> Iterator[None]:
    """Hold the run lock of ``store`` for the block; reentrant (a ``reprocess`` already holding it).

    Raises:
        StoreLockedError: another live job holds it (42), or ``break_lock`` on a live owner without ``force``.
    """
    from sgma_batch.reprocess import acquire_lock, read_lock, release_lock

    holder = read_lock(store)
    if holder is not None and _held_by_us(holder):
        yield
        return
    if holder is not None and break_lock:
        check_break(store, holder, force=force)
    acquire_lock(store, note=note, break_lock=break_lock and holder is not None)
    try:
        yield
    finally:
        release_lock(store)


# -- bounded cluster connection ----------------------------------------------------------------------------
def _host_port(address: str) -> tuple[str, int] | None:
    """``host:port`` of a Ray address (``ray://host:port``, ``host:port``); None for ``auto``/``local``."""
    text = address.strip()
    if text in ("", "auto", "local"):
        return None
    if "://" in text:
        scheme, _, text = text.partition("://")
        if scheme not in ("ray", "rays", "http", "https"):
            return None
        text = text.split("/", 1)[0].rsplit("@", 1)[-1]
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def probe_ray_address(address: str | None, *, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Fail fast when ``address`` (or ``RAY_ADDRESS``) names a ``host:port`` that nothing answers on.

    ``ray.init`` retries such an address for minutes and cannot be interrupted; a TCP connect with a
    timeout tells a dead address in seconds. ``auto`` and unparsable addresses are left to ``ray.init``,
    which the run bounds with :data:`CLUSTER_CONNECT_TIMEOUT_S`.

    Raises:
        ClusterUnreachableError: (exit 5) nothing accepts a connection there.
    """
    given = address or os.environ.get("RAY_ADDRESS")
    if not given:
        return
    target = _host_port(given)
    if target is None:
        return
    source = "--address" if address else "RAY_ADDRESS"
    from sgma_batch.redact import redact

    try:
        with socket.create_connection(target, timeout=timeout_s):
            pass
    except (OSError, ValueError) as exc:  # refused, unreachable, timed out, a bad host name, port > 65535
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise ClusterUnreachableError(
            f"Ray cluster at {redact(given)} ({source}) does not answer: {reason}; start the cluster or fix "
            f"{source}"
        ) from None
