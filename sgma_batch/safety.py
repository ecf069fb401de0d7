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

import errno
import json
import logging
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, TypeVar

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
T = TypeVar("T")

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
    if "://" in text:
        from sgma_batch.errors import UsageError
        from sgma_batch.storage import location

        try:
            loc = location(text)
        except ValueError as exc:  # ftp://, a typo: never taken for a folder named "ftp:"
            raise UsageError(f"{flag} {exc}") from None
        if isinstance(loc, str):
            return _check_url_target(loc, kind=kind, replace=replace, flag=flag)  # type: ignore[return-value]
        text = str(loc)  # file:///abs/path
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
        _check_creatable(p, text, flag)
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


def _check_creatable(p: Path, text: str, flag: str) -> None:
    """The nearest existing folder above a new path is a writable folder (StoreUnwritableError, 41)."""
    from sgma_batch.errors import StoreUnwritableError

    anc = p.absolute().parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise StoreUnwritableError(f"cannot create {text}: {anc} is a file, not a folder; choose a writable {flag}")
    if not os.access(anc, os.W_OK | os.X_OK):
        read_only = bool(os.statvfs(anc).f_flag & os.ST_RDONLY)
        reason = os.strerror(errno.EROFS) if read_only else os.strerror(errno.EACCES)
        raise StoreUnwritableError(f"cannot create {text} in {anc} ({reason}); choose a writable {flag}")


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


def _check_url_target(text: str, *, kind: StoreKind, replace: bool, flag: str) -> str:
    """:func:`check_output_target` for an object-storage URL: a key under a bucket (not the bucket itself),
    with nothing under it yet or a store of the same kind (read from its ``zarr.json`` / ``.zattrs``)."""
    from sgma_batch import storage

    url = text
    if url.count("/") < 3:
        raise UnsafeOutputError(f"{flag} {text} names a whole bucket; give a key in it such as {text.rstrip('/')}/map.zarr")
    if url.split("://", 1)[0] in storage.READ_ONLY_SCHEMES:
        raise UnsafeOutputError(f"{flag} {text}: http(s) URLs are read-only; write to s3://, gs://, az:// or a path")
    try:
        if not storage.has_children(url):
            return url
        attrs = None
        for meta, key in (("zarr.json", "attributes"), (".zattrs", None)):
            try:
                doc = json.loads(storage.read_bytes(storage.join(url, meta))[:_MAX_META_BYTES])
            except (FileNotFoundError, ValueError):
                continue
            attrs = (doc.get(key, {}) if key else doc) if isinstance(doc, dict) else None
            break
    except OSError as exc:
        from sgma_batch.errors import StoreUnwritableError

        raise StoreUnwritableError(f"{flag} {text} cannot be listed ({exc.strerror}); check the URL, "
                                   "the bucket and the AWS_*/GOOGLE_*/AZURE_* environment") from None
    found: StoreKind | None = None
    if isinstance(attrs, dict):
        found = "mosaic" if "sgma:grid" in attrs else "chips" if attrs.get("format") == _CHIP_FORMAT else None
    if found == kind:
        return url
    what = f"a {_KIND_WORDS[found]}" if found else "objects sgma-batch did not write"
    action = "replace" if replace else "write into"
    raise UnsafeOutputError(
        f"{flag} {text} holds {what}; sgma-batch will not {action} it: give a new key or remove it yourself"
    )


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
    acquire_lock(store, note=note, break_lock=break_lock and holder is not None, force=force)
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


# -- file-system faults while a store is written -------------------------------------------------------------
#: errno values that mean "the output location cannot take this write" rather than a bug.
FS_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.ENOENT,
                       errno.ENOTDIR, errno.EIO})


def is_new_target(path: str | Path) -> bool:
    """True when ``path`` is a local path that does not exist or is an empty folder (a run creates it)."""
    text = str(path)
    if "://" in text:
        return False
    p = Path(text).expanduser()
    try:
        return not p.exists() or (p.is_dir() and not p.is_symlink() and not any(p.iterdir()))
    except OSError:
        return False


def as_store_error(exc: OSError, path: str | Path) -> OSError:
    """A file-system error while writing the store at ``path`` as a one-line StoreUnwritableError (41);
    other errors (and sgma-batch's own) unchanged."""
    from sgma_batch.errors import SgmaError, StoreUnwritableError

    if isinstance(exc, SgmaError) or exc.errno not in FS_ERRNOS:
        return exc
    what = {errno.ENOSPC: "the file system is full", errno.EDQUOT: "the disk quota is exhausted",
            errno.EROFS: "the file system is read-only", errno.ENOENT: "a folder of it disappeared while writing",
            errno.ENOTDIR: "a folder of it was replaced by a file while writing",
            errno.EIO: "the file system reported an I/O error"}.get(exc.errno, exc.strerror or "permission denied")
    return StoreUnwritableError(
        f"cannot write the store {path}: {what} ({os.strerror(exc.errno)}); committed tiles are kept: free "
        "space or fix permissions, then rerun the same command")


def discard_new_store(path: str | Path) -> bool:
    """Remove a store this run created when no tile of it was committed (a failed or stopped first run
    leaves no half-written template). Only a folder that is an sgma-batch mosaic or holds nothing but what
    a store creation writes is removed; returns whether it was."""
    import shutil

    p = Path(str(path)).expanduser()
    if not p.is_dir() or p.is_symlink() or os.path.ismount(p):
        return False
    manifest = p / "manifest"
    try:
        if manifest.is_dir() and any(f.suffix == ".json" for f in manifest.iterdir()):
            return False  # committed tiles: a rerun resumes them
        names = {f.name for f in p.iterdir()}
    except OSError:
        return False
    if store_kind(p) != "mosaic" and not names <= {"zarr.json", ".zgroup", ".zattrs", ".zmetadata", "manifest"} | {
            "class", "confidence", "modality_mask", "robustness", "probability", "x", "y", "spatial_ref"}:
        return False
    shutil.rmtree(p, ignore_errors=True)
    log.info("removed %s: created by this run, no tile committed", p)
    return True


def guarded(fn: Callable[[], T], *, what: str, error: type[Exception], hint: str) -> T:
    """``fn()``, with the library errors a bad input file causes (missing, unreadable, not the expected
    format) turned into one line of ``error`` (an SgmaError class); sgma-batch's own errors pass through."""
    from sgma_batch.errors import SgmaError
    from sgma_batch.redact import redact

    try:
        return fn()
    except SgmaError:
        raise
    except (OSError, ValueError, KeyError, IndexError, TypeError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise error(f"cannot use {what}: {redact(first)}; {hint}") from None


def check_png_target(png: str) -> Path:
    """``--png`` must name a .png file whose folder exists (UsageError, 2), not a folder."""
    from sgma_batch.errors import UsageError

    p = Path(png).expanduser()
    if p.suffix.lower() != ".png" or p.is_dir():
        raise UsageError(f"--png {png} must name a .png file, e.g. --png quicklook.png")
    if not p.parent.is_dir():
        raise UsageError(f"--png {png}: the folder {p.parent} does not exist; create it or choose another path")
    return p
