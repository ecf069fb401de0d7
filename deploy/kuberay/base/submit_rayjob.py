"""Create a RayJob from a template and wait for its outcome (run by the reprocess CronJob's pod).

Talks to the Kubernetes API with the pod's service-account token (standard library only, plus PyYAML,
which the Ray image has). Exit status: 0 when the Ray job SUCCEEDED, 1 when it failed or was stopped,
2 on timeout, so the CronJob's history shows the real outcome of each scheduled reprocess.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import ssl
import sys
import time
import urllib.request
from pathlib import Path

import yaml

log = logging.getLogger("submit_rayjob")
SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TERMINAL = {"Complete", "Failed"}


def _request(api: str, method: str, path: str, token: str, context: ssl.SSLContext | None, body=None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{api}{path}", data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    req.add_header("Accept", "application/json")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, context=context, timeout=30) as resp:
        return json.loads(resp.read())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--template", required=True, help="RayJob manifest (YAML) to create.")
    p.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE") or "default")
    p.add_argument("--api", default="https://kubernetes.default.svc")
    p.add_argument("--token-file", default=str(SA_DIR / "token"))
    p.add_argument("--ca-file", default=str(SA_DIR / "ca.crt"))
    p.add_argument("--poll-s", type=float, default=30.0)
    p.add_argument("--timeout-s", type=float, default=43200.0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)

    job = yaml.safe_load(Path(args.template).read_text())
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    job["metadata"]["name"] = f"{job['metadata']['name']}-{stamp}"
    job["metadata"]["namespace"] = args.namespace
    token = Path(args.token_file).read_text().strip()
    context = ssl.create_default_context(cafile=args.ca_file) if args.api.startswith("https") else None
    base = f"/apis/ray.io/v1/namespaces/{args.namespace}/rayjobs"

    created = _request(args.api, "POST", base, token, context, job)
    name = created["metadata"]["name"]
    log.info("created RayJob %s/%s", args.namespace, name)
    deadline = time.monotonic() + args.timeout_s
    while time.monotonic() < deadline:
        status = _request(args.api, "GET", f"{base}/{name}", token, context).get("status", {})
        deployment, job_status = status.get("jobDeploymentStatus"), status.get("jobStatus")
        log.info("RayJob %s: deployment=%s job=%s", name, deployment, job_status)
        if deployment in TERMINAL:
            ok = job_status == "SUCCEEDED"
            log.info("RayJob %s finished: %s (%s)", name, job_status, status.get("message", ""))
            return 0 if ok else 1
        time.sleep(args.poll_s)
    log.error("RayJob %s still running after %.0f s; giving up (the RayJob keeps running)", name, args.timeout_s)
    return 2


if __name__ == "__main__":
    sys.exit(main())
