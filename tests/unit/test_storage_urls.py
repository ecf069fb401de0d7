"""Paths and object-storage URLs (sgma_batch.storage): parsing, and the local half of every operation.

The object-storage half runs against a real S3 server in tests/integration/test_output_s3.py.
"""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest

from sgma_batch import storage
from sgma_batch.errors import UsageError


@pytest.mark.parametrize("value,expected", [
    ("map.zarr", Path("map.zarr")),
    ("/data/out/map.zarr", Path("/data/out/map.zarr")),
    ("file:///data/out/map.zarr", Path("/data/out/map.zarr")),
    ("file://localhost/data/a%20b.zarr", Path("/data/a b.zarr")),
    ("s3://bucket/maps/a.zarr", "s3://bucket/maps/a.zarr"),
    ("s3://bucket/maps/a.zarr/", "s3://bucket/maps/a.zarr"),
    ("S3://bucket//maps/a.zarr", "s3://bucket/maps/a.zarr"),
    ("gs://bucket/a.zarr", "gs://bucket/a.zarr"),
    ("az://container/a.zarr", "az://container/a.zarr"),
    ("s3://bucket", "s3://bucket"),
    ("https://example.org/models/demo", "https://example.org/models/demo"),
])
def test_location_keeps_urls_and_turns_the_rest_into_paths(value, expected):
    assert storage.location(value) == expected
    assert type(storage.location(value)) is type(expected)


@pytest.mark.parametrize("value,fragment", [
    ("ftp://host/a.zarr", "unsupported URL scheme ftp://"),
    ("s3:///a.zarr", "no bucket"),
    ("file://otherhost/a.zarr", "absolute path"),
])
def test_location_refuses_what_it_cannot_write_instead_of_making_a_folder(value, fragment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=fragment):
        storage.location(value)
    with pytest.raises(UsageError, match=fragment) as err:
        storage.user_location(value)
    assert err.value.exit_code == 2 and str(err.value).startswith("--out ")
    assert not list(tmp_path.iterdir())  # no folder named "ftp:" or "s3:"


def test_join_and_name_for_paths_and_urls():
    assert storage.join("s3://b/maps/a.zarr", "manifest", "t1.json") == "s3://b/maps/a.zarr/manifest/t1.json"
    assert storage.join(Path("/x/a.zarr"), "manifest", "t1.json") == Path("/x/a.zarr/manifest/t1.json")
    assert storage.name("s3://b/maps/a.zarr") == "a.zarr" == storage.name(Path("/x/a.zarr"))
    assert storage.is_url("s3://b/k") and storage.is_url("https://h/k")
    assert not storage.is_url("file:///x") and not storage.is_url(Path("s3://b/k")) and not storage.is_url("a/b")


def test_local_writes_are_atomic_readable_and_create_exclusive_is_exclusive(tmp_path):
    target = tmp_path / "deep" / "rec.json"
    storage.write_json(target, {"a": 1})
    assert storage.read_json(target) == {"a": 1}
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    storage.write_bytes(target, b'{"a": 2}')
    assert storage.read_json(target) == {"a": 2}
    assert [p.name for p in target.parent.iterdir()] == ["rec.json"]  # no temporary file left behind

    lock = tmp_path / "store.sgma-lock"
    winners: list[int] = []
    errors: list[BaseException] = []

    def take(i: int) -> None:
        try:
            storage.create_exclusive(lock, str(i).encode())
            winners.append(i)
        except FileExistsError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1 and len(errors) == 7
    assert lock.read_bytes() == str(winners[0]).encode()


def test_local_listing_deleting_and_zarr_store(tmp_path):
    d = tmp_path / "a.zarr"
    assert not storage.exists(d) and not storage.has_children(d) and storage.list_names(d) == []
    (d / "manifest").mkdir(parents=True)
    for name in ("t2.json", "t1.json", ".t3.json.x.tmp", "notes.txt"):
        (d / "manifest" / name).write_text("{}")
    assert storage.list_names(d / "manifest", suffix=".json") == ["t1.json", "t2.json"]
    assert storage.has_children(d) and storage.exists(d)
    assert storage.read_many([d / "manifest" / n for n in ("t1.json", "t2.json")] * 3) == [b"{}"] * 6
    assert storage.zarr_store(d) == str(d)  # a local store stays zarr's LocalStore, as before
    storage.delete(d / "manifest" / "t1.json")
    storage.delete(d / "manifest" / "t1.json")  # already gone: nothing happens
    storage.delete_tree(d / "manifest")
    storage.delete_tree(d / "manifest")
    assert not (d / "manifest").exists() and d.exists()


def test_http_locations_are_read_only():
    with pytest.raises(PermissionError, match="read-only"):
        storage.write_bytes("https://example.org/x.json", b"{}")
    with pytest.raises(PermissionError, match="read-only"):
        storage.zarr_store("https://example.org/a.zarr")


def test_a_client_follows_the_environment(monkeypatch):
    """A test (or a job) that points AWS_ENDPOINT_URL elsewhere gets a new client, not a cached one."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    a, _ = storage._split("s3://bucket/key")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:2")
    b, key = storage._split("s3://bucket/key")
    assert a is not b and key == "key"
