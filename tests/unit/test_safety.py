"""The overwrite guard, the run lock and the Ray address probe (sgma_batch/safety.py), on the real file
system (tmpfs mounts where the case needs one: the tests run as root in CI and here)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sgma_batch.errors import ClusterUnreachableError, StoreLockedError, UnsafeOutputError
from sgma_batch.reprocess import lock_path, read_lock
from sgma_batch.safety import (
    check_output_target,
    discard_new_store,
    is_new_target,
    probe_ray_address,
    run_lock,
    store_kind,
)


def _mosaic(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group",
                                                "attributes": {"sgma:grid": {"shape": [1, 1]}}}))
    return path


def _chips(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group",
                                                "attributes": {"format": "sgma-chips-v1"}}))
    return path


def test_new_paths_empty_folders_and_stores_of_the_same_kind_are_allowed(tmp_path):
    assert check_output_target(tmp_path / "new.zarr", kind="mosaic") == tmp_path / "new.zarr"
    (tmp_path / "empty").mkdir()
    check_output_target(tmp_path / "empty", kind="chips", replace=True)
    check_output_target(_mosaic(tmp_path / "m.zarr"), kind="mosaic")
    check_output_target(_chips(tmp_path / "c.zarr"), kind="chips", replace=True)
    assert store_kind(tmp_path / "m.zarr") == "mosaic" and store_kind(tmp_path / "c.zarr") == "chips"


@pytest.mark.parametrize("text", ["", "  ", ".", "./", "..", "~", "/"])
def test_special_paths_are_refused(text, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnsafeOutputError) as err:
        check_output_target(text, kind="mosaic")
    assert err.value.exit_code == 44 and "\n" not in str(err.value)


def test_the_working_directory_home_and_their_parents_are_refused(tmp_path, monkeypatch):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    for target in (work, tmp_path / "a", Path.home(), Path.home().parent, work / ".." / "b"):
        with pytest.raises(UnsafeOutputError, match="working directory|home|root|will not write"):
            check_output_target(target, kind="chips", replace=True)


def test_files_symlinks_foreign_folders_and_other_kinds_are_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"\xff\xd8")
    store = _mosaic(tmp_path / "m.zarr")
    (tmp_path / "link.zarr").symlink_to(store)
    cases = {
        tmp_path / "file": "is a file",
        tmp_path / "link.zarr": "symbolic link",
        foreign: "did not write",
        store: "mosaic store",  # chips --overwrite onto a mosaic
    }
    for target, words in cases.items():
        with pytest.raises(UnsafeOutputError, match=words):
            check_output_target(target, kind="chips", replace=True)
    with pytest.raises(UnsafeOutputError, match="chip store"):
        check_output_target(_chips(tmp_path / "c.zarr"), kind="mosaic")
    assert (foreign / "holiday.jpg").exists() and (store / "zarr.json").exists()


def test_a_zarr_json_that_is_huge_or_not_json_is_not_a_store(tmp_path):
    big = tmp_path / "big.zarr"
    big.mkdir()
    (big / "zarr.json").write_bytes(b" " * (2 << 20) + b"{}")
    bad = tmp_path / "bad.zarr"
    bad.mkdir()
    (bad / "zarr.json").write_text("[" * 100000)
    for target in (big, bad):
        assert store_kind(target) is None
        with pytest.raises(UnsafeOutputError):
            check_output_target(target, kind="mosaic")


@pytest.fixture
def tmpfs(tmp_path):
    """A fresh tmpfs mounted at tmp_path/mnt (root only), unmounted afterwards."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)]).returncode:
        pytest.fail("mounting a tmpfs needs root (the CI container runs as root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.integration  # mounts a tmpfs
def test_a_mount_point_is_refused_but_a_folder_inside_it_is_fine(tmpfs):
    (tmpfs / "data.bin").write_bytes(b"1")
    with pytest.raises(UnsafeOutputError, match="mount point"):
        check_output_target(tmpfs, kind="mosaic")
    check_output_target(tmpfs / "map.zarr", kind="mosaic")


def test_discard_new_store_removes_only_uncommitted_stores(tmp_path):
    fresh = _mosaic(tmp_path / "fresh.zarr")
    (fresh / "manifest").mkdir()
    assert is_new_target(tmp_path / "other.zarr") and not is_new_target(fresh)
    assert discard_new_store(fresh) and not fresh.exists()
    committed = _mosaic(tmp_path / "committed.zarr")
    (committed / "manifest").mkdir()
    (committed / "manifest" / "r0_c0.json").write_text("{}")
    assert not discard_new_store(committed) and committed.exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert not discard_new_store(foreign) and (foreign / "notes.txt").exists()


# -- the run lock -------------------------------------------------------------------------------------------
def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def _write_lock(store: Path, pid: int, host: str | None = None) -> None:
    lock_path(store).write_text(json.dumps({"host": host or socket.gethostname(), "pid": pid,
                                            "created": "2026-01-01T00:00:00+00:00"}))


def test_run_lock_is_taken_released_and_reentrant(tmp_path):
    store = tmp_path / "s.zarr"
    with run_lock(store, note="test"):
        assert read_lock(store).pid == os.getpid()
        with run_lock(store):  # reprocess holds it, run_mosaic takes it again: no self-deadlock
            pass
        assert lock_path(store).exists()  # the inner block did not release the outer lock
    assert not lock_path(store).exists()


@pytest.mark.integration  # a child process holds the lock
def test_a_live_lock_is_refused_and_break_lock_needs_a_dead_owner_or_force(tmp_path):
    store = tmp_path / "s.zarr"
    owner = _sleeper()
    try:
        _write_lock(store, owner.pid)
        with pytest.raises(StoreLockedError) as err:
            with run_lock(store):
                pass
        assert err.value.exit_code == 42
        with pytest.raises(StoreLockedError, match="alive"):
            with run_lock(store, break_lock=True):
                pass
        assert read_lock(store).pid == owner.pid  # untouched
        _write_lock(store, owner.pid, host="another-host")  # cannot tell: counts as alive
        with pytest.raises(StoreLockedError, match="another host"):
            with run_lock(store, break_lock=True):
                pass
        with run_lock(store, break_lock=True, force=True):
            assert read_lock(store).pid == os.getpid()
    finally:
        owner.kill()
        owner.wait()
    _write_lock(store, owner.pid)  # now dead
    with run_lock(store, break_lock=True):
        assert read_lock(store).pid == os.getpid()
    lock_path(store).write_text("not json")  # unreadable: names no owner, may be broken
    with run_lock(store, break_lock=True):
        pass


@pytest.mark.integration  # a child process holds the lock
def test_reprocess_break_lock_refuses_a_live_owner(tmp_path):
    from sgma_batch.reprocess import store_locks

    store = tmp_path / "s.zarr"
    owner = _sleeper()
    try:
        _write_lock(store, owner.pid)
        with pytest.raises(StoreLockedError, match="alive"):
            with store_locks([str(store)], break_lock=True):
                pass
    finally:
        owner.kill()
        owner.wait()


# -- the Ray address probe ------------------------------------------------------------------------------------
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_dead_ray_address_fails_fast_and_a_listening_one_passes(monkeypatch):
    port = _closed_port()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        t0 = time.monotonic()
        with pytest.raises(ClusterUnreachableError) as err:
            probe_ray_address(address)
        assert err.value.exit_code == 5 and time.monotonic() - t0 < 5 and "--address" in str(err.value)
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    with pytest.raises(ClusterUnreachableError, match="RAY_ADDRESS"):
        probe_ray_address(None)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        probe_ray_address(f"127.0.0.1:{listener.getsockname()[1]}")
    probe_ray_address("auto")  # left to ray.init, which the run bounds with its timeout


def test_the_probe_message_hides_credentials(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(ClusterUnreachableError) as err:
        probe_ray_address(f"ray://user:s3cret@127.0.0.1:{_closed_port()}")
    assert "s3cret" not in str(err.value)


def test_a_lock_on_a_full_disk_is_exit_41_and_leaves_no_empty_lock(tmp_path):
    from sgma_batch.errors import StoreUnwritableError

    mnt = tmp_path / "full"
    mnt.mkdir()
    assert subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(mnt)]).returncode == 0
    try:
        subprocess.run(["dd", "if=/dev/zero", f"of={mnt / 'fill'}", "bs=1k", "count=8"], capture_output=True)
        with pytest.raises(StoreUnwritableError) as err:
            with run_lock(mnt / "x.zarr"):
                pass
        assert err.value.exit_code == 41
        assert sorted(p.name for p in mnt.iterdir()) == ["fill"]  # no empty lock blocking the next run
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def test_a_new_path_below_a_file_or_on_a_read_only_mount_is_exit_41(tmp_path):
    from sgma_batch.errors import StoreUnwritableError

    (tmp_path / "a-file").write_text("x")
    with pytest.raises(StoreUnwritableError, match="is a file, not a folder; choose a writable --out"):
        check_output_target(tmp_path / "a-file" / "sub" / "m.zarr", kind="mosaic")
    ro = tmp_path / "ro"
    ro.mkdir()
    assert subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(ro)]).returncode == 0
    try:
        with pytest.raises(StoreUnwritableError, match="Read-only file system") as err:
            check_output_target(ro / "m.zarr", kind="chips")
        assert err.value.exit_code == 41
    finally:
        subprocess.run(["umount", "-l", str(ro)])
