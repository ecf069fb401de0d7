"""``submit_rayjob.py`` (the reprocess CronJob's pod) against a real HTTP server on 127.0.0.1.

The server speaks the four Kubernetes API calls the script makes on ``ray.io/v1`` RayJobs (GET one, GET
a label-selected list, POST, DELETE), keeps the RayJobs it holds, validates every created RayJob against
the KubeRay v1.7.0 CRD schema, and answers status polls from a scripted sequence. The script runs as a
subprocess, exactly as in the pod (``python submit_rayjob.py ...``).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from test_deploy_manifests import rendered, validate_crd

pytestmark = pytest.mark.integration  # an API server on 127.0.0.1 and the script in a subprocess

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "kuberay" / "components" / "reprocess-cronjob" / "submit_rayjob.py"
NS = "sgma"
TOKEN = "test-token-123"
BASE = f"/apis/ray.io/v1/namespaces/{NS}/rayjobs"
LABEL = "sgma-batch/scheduled-by"


class FakeKube:
    """RayJobs of one namespace, a request log, and the status sequence each created RayJob goes through."""

    def __init__(self, statuses: list[dict[str, str]]) -> None:
        template = next(d for d in rendered("production") if d["metadata"]["name"] == "sgma-reprocess-template")
        self.jobs: dict[str, dict[str, Any]] = {template["metadata"]["name"]: template}
        self.statuses = statuses
        self.requests: list[tuple[str, str, dict[str, Any] | None]] = []
        self.created: list[dict[str, Any]] = []
        self.polls = 0
        self.server_errors = 0  # answer this many status polls with HTTP 500 first
        self.delete_after: int | None = None  # the created RayJob disappears after this many polls

    def add_finished(self, name: str, created: str, deployment: str = "Complete", scheduled_by: str = "sgma-reprocess"):
        self.jobs[name] = {"apiVersion": "ray.io/v1", "kind": "RayJob",
                           "metadata": {"name": name, "namespace": NS, "creationTimestamp": created,
                                        "labels": {LABEL: scheduled_by}},
                           "spec": {}, "status": {"jobDeploymentStatus": deployment}}

    def handle(self, method: str, raw_path: str, body: dict[str, Any] | None) -> tuple[int, dict[str, Any]]:
        url = urllib.parse.urlsplit(raw_path)
        self.requests.append((method, raw_path, body))
        if not url.path.startswith(BASE):
            return 404, {"kind": "Status", "message": f"no route {url.path}"}
        name = url.path[len(BASE):].strip("/")
        if method == "GET" and not name:
            (selector,) = urllib.parse.parse_qs(url.query)["labelSelector"]
            key, value = selector.split("=")
            return 200, {"items": [j for j in self.jobs.values() if j["metadata"].get("labels", {}).get(key) == value]}
        if method == "GET":
            if name not in self.jobs:
                return 404, {"kind": "Status", "message": f'rayjobs.ray.io "{name}" not found'}
            job = copy.deepcopy(self.jobs[name])
            if job in self.created:
                if self.server_errors:
                    self.server_errors -= 1
                    return 500, {"kind": "Status", "message": "etcdserver: request timed out"}
                if self.delete_after is not None and self.polls >= self.delete_after:
                    del self.jobs[name]
                    return 404, {"kind": "Status", "message": f'rayjobs.ray.io "{name}" not found'}
                job["status"] = self.statuses[min(self.polls, len(self.statuses) - 1)]
                self.polls += 1
            return 200, job
        if method == "POST":
            errors = validate_crd(body)
            if errors or body["metadata"]["name"] in self.jobs:
                return 422, {"kind": "Status", "message": "; ".join(errors) or "already exists"}
            self.jobs[body["metadata"]["name"]] = body
            self.created.append(body)
            return 201, body
        if method == "DELETE":
            return (200, self.jobs.pop(name)) if name in self.jobs else (404, {"message": "not found"})
        return 405, {"message": method}


@pytest.fixture()
def kube() -> Iterator[tuple[FakeKube, str]]:
    state = FakeKube(statuses=[])

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                code, payload = 401, {"message": "Unauthorized"}
            else:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                code, payload = state.handle(self.command, self.path, body)
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _serve

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _cmd(api: str, tmp_path: Path, token: str = TOKEN) -> list[str]:
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    return [sys.executable, str(SCRIPT), "--api", api, "--namespace", NS, "--token-file", str(token_file),
            "--template", "sgma-reprocess-template", "--prefix", "sgma-reprocess"]


def submit(api: str, tmp_path: Path, *extra: str, token: str = TOKEN) -> subprocess.CompletedProcess[str]:
    cmd = [*_cmd(api, tmp_path, token), "--poll-s", "0", *extra]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60)


def test_creates_a_valid_rayjob_from_the_template_and_exits_0_when_it_succeeds(kube, tmp_path: Path) -> None:
    state, api = kube
    state.statuses = [{"jobDeploymentStatus": "Initializing"}, {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"},
                      {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}]
    proc = submit(api, tmp_path)
    assert proc.returncode == 0, proc.stderr
    (job,) = state.created
    template = state.jobs["sgma-reprocess-template"]
    assert validate_crd(job) == []
    assert job["metadata"]["name"].startswith("sgma-reprocess-") and len(job["metadata"]["name"]) <= 47
    assert job["metadata"]["namespace"] == NS and job["metadata"]["labels"][LABEL] == "sgma-reprocess"
    assert job["metadata"]["labels"]["app.kubernetes.io/component"] == "reprocess"
    assert "suspend" not in job["spec"] and template["spec"]["suspend"] is True
    assert job["spec"] == {k: v for k, v in template["spec"].items() if k != "suspend"}
    assert job["spec"]["entrypoint"].startswith("sgma-batch reprocess --spec ")
    methods = [(m, urllib.parse.urlsplit(p).path) for m, p, _ in state.requests]
    assert methods[0] == ("GET", f"{BASE}/sgma-reprocess-template")
    assert methods[2] == ("POST", BASE)
    assert methods[3:] == [("GET", f"{BASE}/{job['metadata']['name']}")] * 3  # polled until Complete
    assert "SUCCEEDED" in proc.stderr


ON_THE_WAY = [{"jobDeploymentStatus": ""}, {"jobDeploymentStatus": "Initializing"},
              {"jobDeploymentStatus": "Waiting"}, {"jobDeploymentStatus": "Running", "jobStatus": "PENDING"},
              {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"},
              {"jobDeploymentStatus": "Retrying", "jobStatus": "FAILED"},  # a retry on a fresh cluster follows
              {"jobDeploymentStatus": "Initializing"}, {"jobDeploymentStatus": "Suspending"},
              {"jobDeploymentStatus": "Scheduling"}]  # unknown to KubeRay 1.7: logged, still waited for


@pytest.mark.parametrize(("final", "code"), [
    ({"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}, 0),
    ({"jobDeploymentStatus": "Complete", "jobStatus": "FAILED", "message": "exit 42"}, 1),
    ({"jobDeploymentStatus": "Complete", "jobStatus": "STOPPED"}, 1),
    ({"jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "reason": "AppFailed"}, 1),
    ({"jobDeploymentStatus": "Failed", "reason": "DeadlineExceeded"}, 1),
    ({"jobDeploymentStatus": "Failed", "reason": "SubmissionFailed"}, 1),
    ({"jobDeploymentStatus": "ValidationFailed", "reason": "ValidationFailed", "message": "bad spec"}, 1),
    ({"jobDeploymentStatus": "Suspended"}, 1),
])
def test_every_rayjob_state_on_the_way_and_at_the_end(kube, tmp_path: Path, final: dict[str, str], code: int) -> None:
    """Every KubeRay 1.7 deployment state is waited through; each way of ending gives its exit status at once."""
    state, api = kube
    state.statuses = [*ON_THE_WAY, final, {"jobDeploymentStatus": "Running"}]
    proc = submit(api, tmp_path)
    assert proc.returncode == code, proc.stderr
    assert state.polls == len(ON_THE_WAY) + 1  # stopped polling at the end state, not before, not after
    assert "unknown RayJob state 'Scheduling'" in proc.stderr
    if final.get("message"):
        assert final["message"] in proc.stderr


def test_a_rayjob_deleted_while_waiting_is_a_failure(kube, tmp_path: Path) -> None:
    state, api = kube
    state.statuses = [{"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}]
    state.delete_after = 2
    proc = submit(api, tmp_path)
    assert proc.returncode == 1 and "deleted while it ran" in proc.stderr


def test_transient_api_errors_while_waiting_are_retried(kube, tmp_path: Path) -> None:
    state, api = kube
    state.statuses = [{"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}]
    state.server_errors = 3
    proc = submit(api, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("HTTP 500") == 3
    state.server_errors, state.jobs = 10, {"sgma-reprocess-template": state.jobs["sgma-reprocess-template"]}
    state.created = []
    proc = submit(api, tmp_path)
    assert proc.returncode == 3  # still failing after the retries: the API refused


@pytest.mark.parametrize("active", ["", "Initializing", "Waiting", "Running", "Retrying", "Suspending"])
def test_an_active_earlier_run_blocks_the_next_one(kube, tmp_path: Path, active: str) -> None:
    """The overlap guard: nothing is created or deleted while this schedule's previous RayJob is active."""
    state, api = kube
    state.add_finished("sgma-reprocess-20250101-030000", "2025-01-01T03:00:00Z", deployment=active)
    for day in range(2, 9):
        state.add_finished(f"sgma-reprocess-2024120{day}-030000", f"2024-12-0{day}T03:00:00Z")
    proc = submit(api, tmp_path, "--keep-finished", "1")
    assert proc.returncode == 4, proc.stderr
    assert "sgma-reprocess-20250101-030000" in proc.stderr
    assert not state.created and not [r for r in state.requests if r[0] in ("POST", "DELETE")]


def test_the_wait_is_derived_from_the_templates_deadlines(kube, tmp_path: Path) -> None:
    """(backoffLimit + 1) x activeDeadlineSeconds + --grace-s; a template without a deadline is refused."""
    state, api = kube
    template = state.jobs["sgma-reprocess-template"]
    template["spec"].update(activeDeadlineSeconds=1, backoffLimit=1)
    state.statuses = [{"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}]
    proc = subprocess.run([*_cmd(api, tmp_path), "--poll-s", "0.2", "--grace-s", "0.5"], check=False,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "after 2 s" in proc.stderr, proc.stderr
    assert "waiting up to 2 s" in proc.stderr
    del template["spec"]["activeDeadlineSeconds"]
    state.created, state.jobs = [], {"sgma-reprocess-template": template}
    proc = submit(api, tmp_path)
    assert proc.returncode == 1 and "no activeDeadlineSeconds" in proc.stderr and not state.created


def test_gives_up_with_exit_2_and_leaves_the_rayjob_running(kube, tmp_path: Path) -> None:
    state, api = kube
    state.statuses = [{"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}]
    proc = submit(api, tmp_path, "--timeout-s", "0")
    assert proc.returncode == 2, proc.stderr
    assert len(state.created) == 1 and not [r for r in state.requests if r[0] == "DELETE"]


def test_an_api_refusal_exits_3_with_the_servers_message(kube, tmp_path: Path) -> None:
    state, api = kube
    proc = submit(api, tmp_path, token="wrong")
    assert proc.returncode == 3 and "HTTP 401 Unauthorized" in proc.stderr
    del state.jobs["sgma-reprocess-template"]
    proc = submit(api, tmp_path)
    assert proc.returncode == 3 and "not found" in proc.stderr and not state.created


def test_deletes_only_this_schedules_finished_rayjobs_beyond_the_newest_kept(kube, tmp_path: Path) -> None:
    state, api = kube
    state.statuses = [{"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}]
    for day in range(1, 6):
        state.add_finished(f"sgma-reprocess-2025010{day}-030000", f"2025-01-0{day}T03:00:00Z",
                           deployment="Failed" if day == 2 else "Complete")
    state.add_finished("sgma-reprocess-20241231-030000", "2024-12-31T03:00:00Z", deployment="Suspended")
    state.add_finished("other-20240101-030000", "2024-01-01T03:00:00Z", scheduled_by="someone-else")
    proc = submit(api, tmp_path, "--keep-finished", "2")
    assert proc.returncode == 0, proc.stderr
    deleted = sorted(urllib.parse.urlsplit(p).path.rsplit("/", 1)[1] for m, p, _ in state.requests if m == "DELETE")
    assert deleted == [f"sgma-reprocess-2025010{d}-030000" for d in (1, 2, 3)]
    # kept: the two newest finished, the suspended one, someone else's, the template and the new run
    assert {"sgma-reprocess-20250104-030000", "sgma-reprocess-20250105-030000", "sgma-reprocess-20241231-030000",
            "other-20240101-030000", "sgma-reprocess-template", state.created[0]["metadata"]["name"]} == set(state.jobs)
