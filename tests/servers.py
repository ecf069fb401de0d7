"""Real servers on 127.0.0.1 for tests: rustac, stac-fastapi-pgstac on PostgreSQL/PostGIS, a STAC proxy that
answers 503 (or 429) a given number of times before forwarding, an HTTP asset server with Range support,
a seeded fault-injecting proxy (5xx, connection resets, stalls, truncated bodies) in front of it, and an
S3-compatible object store (moto's ``moto_server``).

Every server is a context manager that starts a real process (or thread) and tears it down. The asset
server and the chaos proxy are separate processes: ``python tests/servers.py assets|chaos ...``; so is
the S3 server (``moto_server``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import http.server
import json
import os
import re
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
    with _serving(_FaultServer(upstream, failures, status)) as server:
        yield server


@contextlib.contextmanager
def _serving(server: http.server.ThreadingHTTPServer) -> Iterator[Any]:
    """Serve ``server`` on a background thread for the duration of the block, then close it."""
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


# -- remote assets: an HTTP server with Range requests and a fault-injecting proxy (processes) ---------
HEALTH = "/__health__"
STATS = "/__stats__"


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with HEAD and single ``Range: bytes=a-b`` requests (206 + Content-Range), keep-alive."""

    protocol_version = "HTTP/1.1"
    token: str | None = None  # when set, every file request must carry it in the query (a signed URL)

    def log_message(self, *args: Any) -> None:
        pass

    def _serve(self, head: bool) -> None:
        if self.path.split("?")[0] == HEALTH:
            self._reply(200, b"ok", head)
            return
        if self.token is not None and self.token not in self.path.partition("?")[2]:
            self._reply(403, b"signature required", head)
            return
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self._reply(404, b"not found", head)
            return
        size = path.stat().st_size
        start, end = 0, size - 1
        status = 200
        rng = self.headers.get("Range", "")
        if rng.startswith("bytes=") and "," not in rng:  # multi-range: ignore Range, send all (RFC 9110 allows)
            a, _, b = rng[6:].strip().partition("-")
            if a:
                start, end = int(a), min(int(b), size - 1) if b else size - 1
            else:  # suffix range
                start = max(size - int(b), 0)
            if start >= size or start > end:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", "image/tiff" if path.suffix.lower() in (".tif", ".tiff") else "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if not head:
            with open(path, "rb") as fh:
                fh.seek(start)
                self.wfile.write(fh.read(end - start + 1))

    def _reply(self, status: int, body: bytes, head: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)


class _ChaosHandler(http.server.BaseHTTPRequestHandler):
    """Forwards GET/HEAD (with Range) upstream; a seeded share of requests gets a fault instead."""

    protocol_version = "HTTP/1.1"
    server: _ChaosServer

    def log_message(self, *args: Any) -> None:
        pass

    def _handle(self, head: bool) -> None:
        srv = self.server
        if self.path == STATS:
            with srv.lock:
                body = json.dumps({"requests": srv.requests, "faults": dict(srv.faults)}).encode()
            self._send(200, body, head)
            return
        if self.path == HEALTH:
            self._send(200, b"ok", head)
            return
        fault = srv.decide(self.command, self.path, self.headers.get("Range", ""))
        if fault == "5xx":
            self._send(503, b"injected 503", head)
            return
        if fault == "404":  # gone for good (a deleted or moved object)
            self._send(404, b"injected 404", head)
            return
        if fault in ("reset", "stall"):
            if fault == "stall":
                time.sleep(srv.stall_s)  # longer than the client's timeout: the client gives up first
            self._reset()
            return
        headers = {k: v for k, v in (("Range", self.headers.get("Range")),) if v}
        conn = http.client.HTTPConnection(srv.upstream_host, srv.upstream_port, timeout=30)
        try:
            conn.request(self.command, self.path, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            self.send_response(resp.status)
            for k in ("Content-Type", "Content-Range", "Accept-Ranges"):
                if resp.getheader(k):
                    self.send_header(k, resp.getheader(k))
            length = resp.getheader("Content-Length") or str(len(body))
            self.send_header("Content-Length", length)
            self.end_headers()
            if head:
                return
            if fault == "truncate" and len(body) > 1:
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self._reset()
                return
            self.wfile.write(body)
        finally:
            conn.close()

    def _send(self, status: int, body: bytes, head: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _reset(self) -> None:
        """Abort the connection with a TCP RST (SO_LINGER 0), as a crashed or overloaded peer does."""
        import struct

        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()

    def do_GET(self) -> None:
        self._handle(head=False)

    def do_HEAD(self) -> None:
        self._handle(head=True)


class _ChaosServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, upstream: str, *, rate: float, seed: int, kinds: list[str], stall_s: float,
                 broken: list[str], max_consecutive: int, outage: list[str], outage_n: int) -> None:
        super().__init__(("127.0.0.1", port), _ChaosHandler)
        from urllib.parse import urlparse

        u = urlparse(upstream)
        self.upstream_host, self.upstream_port = u.hostname, u.port or 80
        self.rate, self.seed, self.kinds, self.stall_s = rate, seed, kinds, stall_s
        self.broken, self.max_consecutive = broken, max_consecutive
        self.outage, self.outage_n = outage, outage_n
        self.per_path: Counter[str] = Counter()  # requests per path (any method, any range)
        self.lock = threading.Lock()
        self.attempts: Counter[str] = Counter()  # per request key: how many times it was asked
        self.streak: Counter[str] = Counter()  # per request key: consecutive injected faults
        self.requests = 0
        self.faults: Counter[str] = Counter()

    def decide(self, method: str, path: str, rng: str) -> str | None:
        """The fault for this request, or None to forward. Reproducible: the n-th attempt at the same
        (method, path, range) draws from ``Random(seed, key, n)``, whatever the thread order."""
        import random

        key = f"{method} {path} {rng}"
        with self.lock:
            self.requests += 1
            n = self.attempts[key]
            self.attempts[key] += 1
            self.per_path[path] += 1
            if any(o in path for o in self.outage) and self.per_path[path] <= self.outage_n:
                fault: str | None = self.kinds[0]  # down for its first outage_n requests, then fine
            elif any(b in path for b in self.broken):
                fault = self.kinds[n % len(self.kinds)]
                if fault == "stall":
                    fault = "5xx"  # permanent breakage: answer fast, never hang the job
            else:
                draw = random.Random(f"{self.seed}|{key}|{n}").random()
                fault = None
                if draw < self.rate and self.streak[key] < self.max_consecutive:
                    fault = self.kinds[min(int(draw / self.rate * len(self.kinds)), len(self.kinds) - 1)]
            self.streak[key] = self.streak[key] + 1 if fault else 0
            if fault:
                self.faults[fault] += 1
            return fault


@dataclasses.dataclass(frozen=True)
class ChaosProxy:
    """A running fault-injecting proxy: its URL and live counters."""

    url: str

    def stats(self) -> dict[str, Any]:
        """``{"requests": n, "faults": {kind: count}}`` as the proxy process counted them."""
        return requests.get(self.url + STATS, timeout=10).json()


def _spawn(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as fh:
        return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *args], stdout=fh,
                                stderr=subprocess.STDOUT, cwd=str(REPO))


@contextlib.contextmanager
def asset_server(directory: Path, workdir: Path | None = None, *, token: str | None = None) -> Iterator[str]:
    """An HTTP server (a separate process) serving ``directory`` with Range support; yields its URL.
    With ``token``, files are served only to URLs whose query carries it (403 otherwise), like SAS URLs."""
    port = free_port()
    log = (workdir or Path(tempfile.gettempdir())) / f"assets-{port}.log"
    proc = _spawn(["assets", "--dir", str(directory), "--port", str(port), *(["--token", token] if token else [])], log)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(url + HEALTH, proc, 30, log)
        yield url
    finally:
        _stop(proc)


@contextlib.contextmanager
def chaos_proxy(
    upstream: str,
    *,
    rate: float = 0.2,
    seed: int = 0,
    kinds: Iterable[str] = ("5xx", "reset", "stall", "truncate"),
    stall_s: float = 4.0,
    broken: Iterable[str] = (),
    max_consecutive: int = 2,
    outage: Iterable[str] = (),
    outage_n: int = 4,
    workdir: Path | None = None,
) -> Iterator[ChaosProxy]:
    """A fault-injecting HTTP proxy (a separate process on 127.0.0.1) in front of ``upstream``.

    A ``rate`` share of requests (seeded, per request key and attempt) gets one of ``kinds``: ``5xx``
    (503), ``404``, ``reset`` (TCP RST), ``stall`` (``stall_s`` of silence, then RST; set the client timeout
    below it), ``truncate`` (full Content-Length, half the body, then RST). At most ``max_consecutive``
    faults in a row hit the same request, so a flaky asset is flaky, not dead. Paths containing a
    ``broken`` substring fail every time (503 or RST), like a permanently damaged asset. Paths containing an
    ``outage`` substring fail their first ``outage_n`` requests (any range) with ``kinds[0]``, then recover:
    a short outage, longer than GDAL's own retries.
    """
    port = free_port()
    log = (workdir or Path(tempfile.gettempdir())) / f"chaos-{port}.log"
    args = ["chaos", "--upstream", upstream, "--port", str(port), "--rate", str(rate), "--seed", str(seed),
            "--kinds", ",".join(kinds), "--stall-s", str(stall_s), "--max-consecutive", str(max_consecutive)]
    for b in broken:
        args += ["--broken", b]
    for o in outage:
        args += ["--outage", o]
    args += ["--outage-n", str(outage_n)]
    proc = _spawn(args, log)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(url + HEALTH, proc, 30, log)
        yield ChaosProxy(url)
    finally:
        _stop(proc)


# -- an S3-compatible object store: moto's server (a separate process) ----------------------------------
S3_KEY_ID, S3_SECRET, S3_REGION = "testing-key-id", "testing-secret", "us-east-1"
_S3_LOG_LINE = re.compile(r'"(GET|HEAD|PUT) (/[^ ?"]*)[^"]*" (\d{3})')
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # werkzeug colours its request lines, even into a file


@dataclasses.dataclass(frozen=True)
class S3Server:
    """A running S3 server holding one bucket: its URL, bucket and request log."""

    url: str  # http://127.0.0.1:PORT
    bucket: str
    log: Path

    @property
    def endpoint(self) -> str:
        """``host:port``, as GDAL's ``AWS_S3_ENDPOINT`` wants it."""
        return self.url.removeprefix("http://")

    def gdal_env(self, **overrides: str) -> dict[str, str]:
        """The environment that points GDAL's ``/vsis3/`` (and boto3) at this server, path-style, plain HTTP."""
        return {"AWS_S3_ENDPOINT": self.endpoint, "AWS_HTTPS": "NO", "AWS_VIRTUAL_HOSTING": "FALSE",
                "AWS_ACCESS_KEY_ID": S3_KEY_ID, "AWS_SECRET_ACCESS_KEY": S3_SECRET, "AWS_REGION": S3_REGION,
                **overrides}

    def served(self, method: str = "GET", status: str = "") -> Counter[str]:
        """``{"/bucket/key": n}``: the ``method`` requests the server process logged, with a status starting
        with ``status`` (any by default)."""
        seen: Counter[str] = Counter()
        for m, path, code in _S3_LOG_LINE.findall(_ANSI.sub("", self.log.read_text(errors="replace"))):
            if m == method and code.startswith(status):
                seen[path] += 1
        return seen


@contextlib.contextmanager
def s3_server(root: Path, bucket: str = "archive", workdir: Path | None = None) -> Iterator[S3Server]:
    """``moto_server`` on a free port with ``bucket`` holding every file under ``root`` (keys relative to
    it, uploaded with boto3); yields an :class:`S3Server`. Its stderr (one line per request) is ``.log``."""
    import boto3

    port = free_port()
    log = (workdir or Path(tempfile.gettempdir())) / f"s3-{port}.log"
    moto = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    with open(log, "w") as fh:
        proc = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)], stdout=fh, stderr=subprocess.STDOUT)
    server = S3Server(f"http://127.0.0.1:{port}", bucket, log)
    try:
        _wait_http(server.url + "/moto-api/", proc, 60, log)
        s3 = boto3.client("s3", endpoint_url=server.url, aws_access_key_id=S3_KEY_ID,
                          aws_secret_access_key=S3_SECRET, region_name=S3_REGION)
        s3.create_bucket(Bucket=bucket)
        for f in sorted(p for p in Path(root).rglob("*") if p.is_file()):
            s3.upload_file(str(f), bucket, f.relative_to(root).as_posix())
        yield server
    finally:
        _stop(proc)


def remote_items(catalog: Path, root: Path, base_url: str, out: Path) -> Path:
    """The items of a local static catalogue with every asset under ``root`` re-pointed at ``base_url``
    (relative paths kept), written as one item-collection file: the same archive, read over HTTP (or S3,
    with an ``s3://bucket`` base)."""
    from sgma_batch.search import StaticCatalog

    root = root.resolve()
    items = []
    for item in StaticCatalog(catalog).items():
        item = json.loads(json.dumps(item))
        for asset in (item.get("assets") or {}).values():
            href = Path(asset["href"])
            if href.is_absolute() and href.resolve().is_relative_to(root):
                asset["href"] = f"{base_url.rstrip('/')}/{href.resolve().relative_to(root).as_posix()}"
        items.append(item)
    return write_item_collection(items, out)


def _main(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="servers.py")
    sub = parser.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("assets")
    a.add_argument("--dir", required=True)
    a.add_argument("--port", type=int, required=True)
    a.add_argument("--token", default=None)
    c = sub.add_parser("chaos")
    c.add_argument("--upstream", required=True)
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--rate", type=float, default=0.2)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--kinds", default="5xx,reset,stall,truncate")
    c.add_argument("--stall-s", type=float, default=4.0)
    c.add_argument("--broken", action="append", default=[])
    c.add_argument("--max-consecutive", type=int, default=2)
    c.add_argument("--outage", action="append", default=[])
    c.add_argument("--outage-n", type=int, default=4)
    ns = parser.parse_args(argv)
    if ns.cmd == "assets":
        import functools

        _RangeHandler.token = ns.token
        handler = functools.partial(_RangeHandler, directory=ns.dir)
        server: http.server.ThreadingHTTPServer = http.server.ThreadingHTTPServer(("127.0.0.1", ns.port), handler)
        server.daemon_threads = True
    else:
        server = _ChaosServer(ns.port, ns.upstream, rate=ns.rate, seed=ns.seed, kinds=ns.kinds.split(","),
                              stall_s=ns.stall_s, broken=ns.broken, max_consecutive=ns.max_consecutive,
                              outage=ns.outage, outage_n=ns.outage_n)
    server.serve_forever()


# -- a proxy that drops connections (archive: retries on connection errors) -------------------------
class _DropHandler(_FaultHandler):
    """Closes the connection without any answer to the first ``failures`` requests of each method+path."""

    def _handle(self) -> None:
        key = f"{self.command} {self.path.split('?')[0]}"
        with self.server.lock:
            drop = self.server.seen[key] < self.server.failures
            if drop:
                self.server.seen[key] += 1
                self.server.faults[key] += 1
        if not drop:
            super()._handle()
            return
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)  # no status line: the client sees the connection die

    do_GET = _handle
    do_POST = _handle


@contextlib.contextmanager
def drop_proxy(upstream: str, *, failures: int = 2) -> Iterator[_FaultServer]:
    """Like :func:`fault_proxy`, but the first ``failures`` requests of each method+path lose their
    connection (a connection error, not an HTTP status)."""
    server = _FaultServer(upstream, failures, 0)
    server.RequestHandlerClass = _DropHandler
    with _serving(server) as running:
        yield running


if __name__ == "__main__":
    _main(sys.argv[1:])
