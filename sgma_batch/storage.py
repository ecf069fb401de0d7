"""Where stores, chips and checkpoints live: a local path or an object-storage URL, behind one small API.

Every output and model argument (``--out``, ``--model``, a reprocessing store template, a chip store, a
checkpoint directory) goes through :func:`location`: a local path stays a :class:`~pathlib.Path` (and the
code on disk is the same as before), ``file:///abs/path`` becomes that path, and ``s3://``, ``s3a://``,
``gs://``, ``az://`` / ``azure://`` / ``abfs[s]://`` stay URLs (a string). ``http(s)://`` is read-only
(a checkpoint can be loaded from a web server). Everything else here takes either.

Library: `obstore <https://developmentseed.org/obstore>`_ (Python bindings of the Rust ``object_store``
crate) under zarr's own :class:`zarr.storage.ObjectStore`. Why, rather than fsspec/s3fs:

* it installs with the pins: one self-contained wheel with no Python dependencies, while s3fs brings
  aiobotocore, which pins botocore to a narrower range than the boto3 that moto (the test S3 server)
  brings (``pip install s3fs`` here downgrades botocore 1.44 to 1.43 under boto3 1.44);
* conditional writes: ``put(mode="create")`` is an ``If-None-Match: *`` PUT, so the run lock of
  ``reprocess`` is atomic on S3 (and GCS/Azure) as ``O_CREAT | O_EXCL`` is on disk;
* zarr 3.1 ships the adapter (``zarr.storage.ObjectStore``), so xarray's ``to_zarr``, region writes and
  ``consolidate_metadata`` run unchanged on it;
* S3, GCS and Azure from one client, configured from the standard environment variables
  (``AWS_ENDPOINT_URL``, ``AWS_REGION``, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/
  ``AWS_SESSION_TOKEN``, ``AWS_ALLOW_HTTP=true`` for a plain-HTTP endpoint, ``AWS_SKIP_SIGNATURE=true``
  for a public bucket; ``GOOGLE_*``; ``AZURE_STORAGE_*``).

Atomicity: one object PUT is atomic on S3, GCS and Azure (a reader sees the old object or the whole new
one), so a manifest record, ``item.json`` and a checkpoint's ``card.json`` are each one PUT, as on disk
they are a temporary file renamed into place.

Errors: a missing object raises :class:`FileNotFoundError`, an existing one for a create-only write
:class:`FileExistsError`, anything else (no credentials, no bucket, an unreachable endpoint)
:class:`OSError` with a one-line message, the same classes the local filesystem raises.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = [
    "OBJECT_SCHEMES",
    "READ_ONLY_SCHEMES",
    "Loc",
    "as_oserror",
    "create_exclusive",
    "delete",
    "delete_tree",
    "exists",
    "has_children",
    "is_url",
    "join",
    "list_names",
    "location",
    "name",
    "read_bytes",
    "read_json",
    "read_many",
    "user_location",
    "write_bytes",
    "write_errors",
    "write_json",
    "zarr_store",
]

#: Schemes written and read through obstore (``az`` also takes ``azure``/``abfs``/``abfss``).
OBJECT_SCHEMES = frozenset({"s3", "s3a", "gs", "az", "azure", "abfs", "abfss"})
#: Schemes that can only be read (a checkpoint from a web server).
READ_ONLY_SCHEMES = frozenset({"http", "https"})

#: A location: a local Path or an object-storage URL (``scheme://bucket/key``, no trailing slash).
Loc = Path | str

#: The environment variables that configure the object-store clients; a client is built once per URL
#: root and these values, so a test that points them at another server gets a new client.
_ENV_PREFIXES = ("AWS_", "GOOGLE_", "AZURE_", "OBJECT_STORE_")


def _scheme(value: str) -> str:
    return value.split("://", 1)[0].lower() if "://" in value else ""


def is_url(value: str | os.PathLike[str]) -> bool:
    """True for an object-storage or http(s) URL (``file://`` is a path)."""
    return isinstance(value, str) and _scheme(value) in OBJECT_SCHEMES | READ_ONLY_SCHEMES


def location(value: str | os.PathLike[str]) -> Loc:
    """A CLI/spec value as a location: a Path, or a normalised URL string.

    Raises:
        ValueError: a ``scheme://`` this build cannot read or write (``ftp://``, a typo), or a URL with
            no bucket, so it is never taken for a local folder named ``ftp:``.
    """
    if isinstance(value, Path):
        return value
    value = os.fspath(value)
    scheme = _scheme(value)
    if not scheme:
        return Path(value)
    if scheme == "file":
        parts = urlsplit(value)
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"{value}: a file:// URL needs an absolute path (file:///data/map.zarr)")
        return Path(unquote(parts.path))
    if scheme not in OBJECT_SCHEMES | READ_ONLY_SCHEMES:
        known = ", ".join(sorted(f"{s}://" for s in OBJECT_SCHEMES | READ_ONLY_SCHEMES | {"file"}))
        raise ValueError(f"{value}: unsupported URL scheme {scheme}://; use a path or one of {known}")
    parts = urlsplit(value)
    if not parts.netloc:
        raise ValueError(f"{value}: no bucket in the URL; write {scheme}://BUCKET/path")
    key = parts.path.strip("/")
    return f"{scheme}://{parts.netloc}" + (f"/{key}" if key else "")


def join(loc: Loc, *parts: str) -> Loc:
    """``loc / part / ...`` for a path or a URL."""
    if isinstance(loc, Path):
        return loc.joinpath(*parts)
    return "/".join([loc.rstrip("/"), *(p.strip("/") for p in parts)])


def name(loc: Loc) -> str:
    """The last component (``map.zarr`` of ``s3://b/x/map.zarr``)."""
    return loc.name if isinstance(loc, Path) else loc.rstrip("/").rsplit("/", 1)[-1]


# -- the obstore clients ----------------------------------------------------------------------------
def _env_key() -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES)))


@functools.lru_cache(maxsize=64)
def _client(url: str, env: tuple[tuple[str, str], ...]) -> Any:
    """An obstore client for ``url`` (a bucket, or a prefix in it), configured from ``env``."""
    from obstore.store import from_url

    if _scheme(url) in ("s3", "s3a"):
        # object_store reads AWS_ENDPOINT (and the AWS_* it knows) itself; the AWS CLI's newer
        # AWS_ENDPOINT_URL is honoured too, and AWS_REGION falls back to AWS_DEFAULT_REGION.
        env_d = dict(env)
        config: dict[str, Any] = {}
        if "AWS_ENDPOINT" not in env_d and "AWS_ENDPOINT_URL" in env_d:
            config["endpoint"] = env_d["AWS_ENDPOINT_URL"]
        if "AWS_REGION" not in env_d and "AWS_DEFAULT_REGION" in env_d:
            config["region"] = env_d["AWS_DEFAULT_REGION"]
        return from_url(url, config=config or None)
    return from_url(url)


def _split(url: str) -> tuple[Any, str]:
    """(client of the URL's bucket, key in it); for http(s), a client of the folder and the file name."""
    if _scheme(url) in READ_ONLY_SCHEMES:
        folder, _, file = url.rpartition("/")
        return _client(folder, _env_key()), file
    scheme, rest = url.split("://", 1)
    bucket, _, key = rest.partition("/")
    return _client(f"{scheme}://{bucket}", _env_key()), key.strip("/")


def _oserror(url: str, exc: Exception) -> OSError:
    """An obstore error as the OSError the local filesystem would raise, with a one-line message."""
    if isinstance(exc, OSError):
        return exc
    from obstore.exceptions import (
        AlreadyExistsError,
        NotFoundError,
        PermissionDeniedError,
        UnauthenticatedError,
    )

    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, NotFoundError):
        return FileNotFoundError(2, "no such object", url)
    if isinstance(exc, AlreadyExistsError):
        return FileExistsError(17, "object exists", url)
    if isinstance(exc, PermissionDeniedError | UnauthenticatedError):
        return PermissionError(13, f"access denied ({first[:200]})", url)
    return OSError(5, f"object store error ({first[:300]})", url)


def _call(url: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    from obstore.exceptions import BaseError

    try:
        return fn(*args, **kwargs)
    except BaseError as exc:
        raise _oserror(url, exc) from None


# -- objects ----------------------------------------------------------------------------------------
def read_bytes(loc: Loc) -> bytes:
    """The whole object/file. Raises FileNotFoundError when there is none."""
    if isinstance(loc, Path):
        return loc.read_bytes()
    import obstore

    client, key = _split(loc)
    return bytes(_call(loc, lambda: obstore.get(client, key).bytes()))


def read_json(loc: Loc) -> Any:
    return json.loads(read_bytes(loc))


def read_many(locs: Iterable[Loc], *, threads: int = 16) -> list[bytes]:
    """Several objects at once (a manifest of thousands of records is thousands of GETs)."""
    locs = list(locs)
    if len(locs) < 4 or all(isinstance(loc, Path) for loc in locs):
        return [read_bytes(loc) for loc in locs]
    with ThreadPoolExecutor(max_workers=threads) as pool:  # obstore releases the GIL while it waits
        return list(pool.map(read_bytes, locs))


def write_bytes(loc: Loc, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``loc`` atomically: readers see the old content or the new, never a part.

    On disk a temporary file in the same folder, fsynced and renamed into place (created with ``mode``);
    on object storage one PUT, which is atomic there.
    """
    if isinstance(loc, Path):
        loc.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=loc.parent, prefix=f".{loc.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, mode)
            os.replace(tmp, loc)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return
    _writable(loc)
    import obstore

    client, key = _split(loc)
    _call(loc, obstore.put, client, key, data)


def write_json(loc: Loc, obj: Any, **dump: Any) -> None:
    """:func:`write_bytes` of ``json.dumps(obj, **dump)``."""
    write_bytes(loc, json.dumps(obj, **dump).encode())


def create_exclusive(loc: Loc, data: bytes) -> None:
    """Create ``loc`` only if nothing is there; FileExistsError otherwise. Atomic against a concurrent
    creator: ``O_CREAT | O_EXCL`` on disk, a conditional PUT (``If-None-Match: *``) on object storage."""
    if isinstance(loc, Path):
        loc.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(loc, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:  # a full disk after the create: leave no empty lock that blocks every later run
            loc.unlink(missing_ok=True)
            raise
        return
    _writable(loc)
    import obstore

    client, key = _split(loc)
    _call(loc, obstore.put, client, key, data, mode="create")


def delete(loc: Loc) -> None:
    """Remove one file/object; nothing happens when it is already gone."""
    if isinstance(loc, Path):
        loc.unlink(missing_ok=True)
        return
    import obstore

    client, key = _split(loc)
    try:
        _call(loc, obstore.delete, client, key)
    except FileNotFoundError:
        pass


def delete_tree(loc: Loc) -> None:
    """Remove a folder / every object under the prefix ``loc/``."""
    if isinstance(loc, Path):
        if loc.exists():
            shutil.rmtree(loc)
        return
    import obstore

    client, key = _split(loc)
    for batch in _call(loc, lambda: list(obstore.list(client, prefix=key + "/", chunk_size=1000))):
        paths = [m["path"] for m in batch]
        if paths:
            _call(loc, obstore.delete, client, paths)


def exists(loc: Loc) -> bool:
    """A file/object at ``loc``, or (for a folder/prefix) anything under it."""
    if isinstance(loc, Path):
        return loc.exists()
    return _head(loc) or has_children(loc)


def _head(url: str) -> bool:
    import obstore

    client, key = _split(url)
    try:
        _call(url, obstore.head, client, key)
        return True
    except FileNotFoundError:
        return False


def has_children(loc: Loc) -> bool:
    """True when the folder ``loc`` holds anything (on object storage: any key under ``loc/``)."""
    if isinstance(loc, Path):
        return loc.is_dir() and any(loc.iterdir())
    import obstore

    client, key = _split(loc)

    def first() -> bool:
        for batch in obstore.list(client, prefix=key + "/", chunk_size=1):
            return bool(batch)
        return False

    return bool(_call(loc, first))


def list_names(loc: Loc, *, suffix: str = "") -> list[str]:
    """Sorted names of the files/objects directly in folder ``loc`` that end with ``suffix``
    (dot-files, such as an interrupted write's temporary file, excluded)."""
    if isinstance(loc, Path):
        if not loc.is_dir():
            return []
        return sorted(p.name for p in loc.iterdir() if p.is_file() and p.name.endswith(suffix)
                      and not p.name.startswith("."))
    import obstore

    client, key = _split(loc)
    listing = _call(loc, obstore.list_with_delimiter, client, key + "/")
    names = (m["path"].rsplit("/", 1)[-1] for m in listing["objects"])
    return sorted(n for n in names if n.endswith(suffix) and not n.startswith("."))


def _writable(url: str) -> None:
    if _scheme(url) in READ_ONLY_SCHEMES:
        raise PermissionError(13, "http(s) locations are read-only here; write to s3://, gs://, az:// or a path",
                              url)


# -- zarr --------------------------------------------------------------------------------------------
def zarr_store(loc: Loc, *, read_only: bool = False) -> Any:
    """What zarr/xarray open for ``loc``: the path as a string (zarr's LocalStore, as before), or a
    :class:`zarr.storage.ObjectStore` over obstore rooted at the URL."""
    if isinstance(loc, Path):
        return str(loc)
    _writable(loc) if not read_only else None
    return _zarr_object_store(loc, read_only, _env_key())


@functools.lru_cache(maxsize=64)
def _zarr_object_store(url: str, read_only: bool, env: tuple[tuple[str, str], ...]) -> Any:
    from zarr.storage import ObjectStore

    return ObjectStore(_client(url, env), read_only=read_only)  # a client whose key prefix is the store


@contextlib.contextmanager
def as_oserror(loc: Loc) -> Iterator[None]:
    """Turn an obstore error raised inside the block (by zarr's ObjectStore) into :func:`_oserror`'s OSError."""
    try:
        yield
    except Exception as exc:
        if type(exc).__module__.startswith("obstore"):
            raise _oserror(str(loc), exc) from None
        raise


@contextlib.contextmanager
def write_errors(loc: Loc) -> Iterator[None]:
    """Writing the store ``loc``: on object storage, a failed request inside the block (endpoint down,
    bucket gone, credentials expired) becomes one :class:`~sgma_batch.errors.StoreUnwritableError` line
    (exit 41) naming the store. Local paths are left to the file-system handling as before."""
    if isinstance(loc, Path):
        yield
        return
    from sgma_batch.errors import SgmaError, StoreUnwritableError

    try:
        yield
    except SgmaError:
        raise
    except Exception as exc:
        if not (isinstance(exc, OSError) or type(exc).__module__.startswith("obstore")):
            raise
        err = _oserror(str(loc), exc)
        raise StoreUnwritableError(
            f"cannot write the store {loc}: {err.strerror or err}; committed tiles are kept: check the endpoint, "
            "the bucket and the credentials, then rerun the same command") from None


def user_location(value: str | os.PathLike[str], flag: str = "--out") -> Loc:
    """:func:`location` for a user's argument: an unsupported URL is a usage error (exit 2), one line."""
    from sgma_batch.errors import UsageError

    try:
        return location(value)
    except ValueError as exc:
        raise UsageError(f"{flag} {exc}") from None
