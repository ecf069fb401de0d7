"""Real STAC servers on 127.0.0.1 for tests: rustac, stac-fastapi-pgstac on PostgreSQL/PostGIS, and a
fault-injecting proxy that answers 503 (or 429) a given number of times before forwarding.

Every server is a context manager that starts a real process (or thread) and tears it down.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO / ".." / "shared" / "data"
STAC_DIR = SHARED_DATA / "stac"
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_features(path: Path) -> list[dict[str, Any]]:
    """Items of a STAC JSON file (FeatureCollection, plain list, or single Feature)."""
    data = json.loads(Path(path).read_text())
    if isinstance(data, list):
        return data
    if data.get("type") == "FeatureCollection":
        return list(data["features"])
    if data.get("type") == "Feature":
        return [data]
    return []


def real_item_files() -> list[Path]:
    return sorted(p for p in STAC_DIR.glob("*.json") if load_features(p))


def write_item_collection(items: Iterable[dict[str, Any]], path: Path) -> Path:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": list(items)}))
    return path


def _wait_http(url: str, proc: subprocess.Popen | None, timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}: {tail}")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server at {url} did not answer within {timeout} s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@contextlib.contextmanager
def rustac_server(item_files: Iterable[Path], workdir: Path) -> Iterator[str]:
    """``rustac serve`` (in-memory backend) on a free port with the items of the given files; yields the URL."""
    workdir.mkdir(parents=True, exist_ok=True)
    hrefs = []
    for i, f in enumerate(item_files):
        hrefs.append(str(write_item_collection(load_features(Path(f)), workdir / f"items-{i}.json")))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = workdir / "rustac.log"
    rustac = shutil.which("rustac") or str(Path(sys.executable).parent / "rustac")
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [rustac, "serve", "--addr", f"127.0.0.1:{port}", "--create-collections", *hrefs],
            stdout=fh, stderr=subprocess.STDOUT,
        )
    try:
        _wait_http(f"{url}/collections", proc, 30, log)
        yield url
    finally:
        _stop(proc)


class _FaultHandler(http.server.BaseHTTPRequestHandler):
    server: _FaultServer

    def log_message(self, *args: Any) -> None:  # keep test output quiet
        pass

    def _handle(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        key = f"{self.command} {self.path.split('?')[0]}"
        with self.server.lock:
            self.server.seen[key] += 1
            fail = self.server.seen[key] <= self.server.failures
        if fail:
            self.server.faults[key] += 1
            payload = b'{"code":"ServiceUnavailable"}'
            self.send_response(self.server.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            if self.server.status == 429:
                self.send_header("Retry-After", "0")
            self.end_headers()
            self.wfile.write(payload)
            return
        upstream = requests.request(
            self.command, self.server.upstream + self.path, data=body or None,
            headers={"Content-Type": self.headers.get("Content-Type", "application/json")}, timeout=30,
        )
        # Rewrite the upstream's own links so paging comes back through the proxy.
        content = upstream.content.replace(self.server.upstream.encode(), self.server.url.encode())
        self.send_response(upstream.status_code)
        self.send_header("Content-Type", upstream.headers.get("Content-Type", "application/json"))
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    do_GET = _handle
    do_POST = _handle


class _FaultServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str, failures: int, status: int) -> None:
        super().__init__(("127.0.0.1", 0), _FaultHandler)
        self.upstream = upstream.rstrip("/")
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.failures = failures
        self.status = status
        self.lock = threading.Lock()
        self.seen: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()


@contextlib.contextmanager
def fault_proxy(upstream: str, *, failures: int = 2, status: int = 503) -> Iterator[_FaultServer]:
    """A real HTTP proxy on 127.0.0.1 answering ``status`` to the first ``failures`` requests of each
    method+path, then forwarding to ``upstream``. ``server.faults`` counts the injected failures."""
    server = _FaultServer(upstream, failures, status)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# -- stac-fastapi-pgstac on PostgreSQL/PostGIS ------------------------------------------------------
def _as_postgres(cmd: list[str]) -> list[str]:
    """Run PostgreSQL tools as the postgres user when the tests run as root (initdb refuses root)."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


@contextlib.contextmanager
def pgstac_server(collections: list[dict[str, Any]], items: list[dict[str, Any]]) -> Iterator[str]:
    """PostgreSQL 15 + PostGIS in a fresh temp data dir (removed after), pypgstac schema and data,
    stac-fastapi-pgstac on a free port; yields the URL."""
    # pytest's tmp dirs are private to root (0700); the postgres user needs its own directory.
    workdir = Path(tempfile.mkdtemp(prefix="sgma-pgstac-"))
    pgdata = workdir / "pgdata"
    sock = workdir / "sock"
    sock.mkdir(exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(workdir, "postgres", "postgres")
        shutil.chown(sock, "postgres", "postgres")
    init = subprocess.run(
        _as_postgres([str(PG_BIN / "initdb"), "-D", str(pgdata), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]),
        capture_output=True, text=True,
    )
    if init.returncode:
        shutil.rmtree(workdir, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {init.stderr.strip()[-1000:]}")
    pg_port = free_port()
    log = workdir / "postgres.log"
    pg = subprocess.Popen(
        _as_postgres([
            str(PG_BIN / "postgres"), "-D", str(pgdata), "-p", str(pg_port), "-k", str(sock),
            "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off", "-c", "max_connections=50",
        ]),
        stdout=open(log, "w"), stderr=subprocess.STDOUT,
    )
    api = None
    try:
        dsn = f"postgresql://postgres@127.0.0.1:{pg_port}/postgres"
        _wait_pg(dsn, pg, log)
        env = {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(pg_port), "PGUSER": "postgres", "PGDATABASE": "postgres"}
        subprocess.run([sys.executable, "-m", "pypgstac.pypgstac", "migrate", "--dsn", dsn], check=True, capture_output=True, env=env)
        _load_pgstac(dsn, collections, items, workdir)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        api_env = {
            **env,
            "POSTGRES_USER": "postgres", "POSTGRES_PASS": "", "POSTGRES_DBNAME": "postgres",
            "POSTGRES_HOST_READER": "127.0.0.1", "POSTGRES_HOST_WRITER": "127.0.0.1", "POSTGRES_PORT": str(pg_port),
            "PGUSER": "postgres", "PGPASSWORD": "", "PGHOST": "127.0.0.1", "PGDATABASE": "postgres",
            "ENABLED_EXTENSIONS": "query,filter,sort,fields,pagination,collection_search",
            "DB_MIN_CONN_SIZE": "1", "DB_MAX_CONN_SIZE": "2",
        }
        api_log = workdir / "api.log"
        api = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "stac_fastapi.pgstac.app:create_app", "--factory",
             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
            stdout=open(api_log, "w"), stderr=subprocess.STDOUT, env=api_env, cwd=str(workdir),
        )
        _wait_http(f"{url}/collections", api, 60, api_log)
        yield url
    finally:
        if api is not None:
            _stop(api)
        _stop(pg)
        shutil.rmtree(workdir, ignore_errors=True)


def _wait_pg(dsn: str, proc: subprocess.Popen, log: Path) -> None:
    import psycopg

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"postgres exited: {log.read_text()[-2000:]}")
        try:
            with psycopg.connect(dsn, connect_timeout=1):
                return
        except psycopg.OperationalError:
            time.sleep(0.2)
    raise RuntimeError("postgres did not start within 30 s")


def _load_pgstac(dsn: str, collections: list[dict[str, Any]], items: list[dict[str, Any]], workdir: Path) -> None:
    from pypgstac.db import PgstacDB
    from pypgstac.load import Loader, Methods

    cols = workdir / "collections.ndjson"
    cols.write_text("\n".join(json.dumps(c) for c in collections))
    its = workdir / "items.ndjson"
    its.write_text("\n".join(json.dumps(i) for i in items))
    with PgstacDB(dsn=dsn) as db:
        loader = Loader(db=db)
        loader.load_collections(str(cols), Methods.upsert)
        loader.load_items(str(its), Methods.upsert)


def minimal_collection(cid: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    """A valid STAC Collection spanning the given items (for servers that need collections first)."""
    from sgma_batch.sensors._items import item_time_range

    xs = [i["bbox"] for i in items if i.get("bbox")]
    times = [item_time_range(i) for i in items]
    return {
        "type": "Collection", "stac_version": "1.0.0", "id": cid, "description": cid, "license": "proprietary",
        "links": [],
        "extent": {
            "spatial": {"bbox": [[min(b[0] for b in xs), min(b[1] for b in xs), max(b[2] for b in xs), max(b[3] for b in xs)]]},
            "temporal": {"interval": [[min(t[0] for t in times).isoformat(), max(t[1] for t in times).isoformat()]]},
        },
    }


def catalog_items_file(catalog_path: Path, out: Path) -> Path:
    """All items of a static catalog.json (absolute asset hrefs) as one item-collection file for rustac."""
    from sgma_batch.search import StaticCatalog

    return write_item_collection(StaticCatalog(catalog_path).items(), out)
