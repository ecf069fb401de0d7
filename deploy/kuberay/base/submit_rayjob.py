"""Create a RayJob from a suspended template RayJob and wait for its outcome (the reprocess CronJob's pod).

Talks to the Kubernetes API with the pod's service-account token (standard library only). Before creating
the new RayJob it deletes the finished RayJobs this schedule created earlier, keeping the newest
``--keep-finished`` (selected by the label ``sgma-batch/scheduled-by=<prefix>``), so they never pile up.

Exit status: 0 when the Ray job SUCCEEDED, 1 when it failed or was stopped, 2 on timeout (the RayJob keeps
running), 3 when the Kubernetes API refused a request; the CronJob's history shows the real outcome.
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
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

log = logging.getLogger("submit_rayjob")
SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TERMINAL = {"Complete", "Failed"}
SCHEDULE_LABEL = "sgma-batch/scheduled-by"
MAX_NAME = 47  # KubeRay refuses longer RayJob names (it derives cluster and pod names from them)


class ApiError(RuntimeError):
    """The Kubernetes API answered with an error status."""


class Api:
    """The few calls on ``ray.io/v1`` RayJobs of one namespace that this script makes."""

    def __init__(self, server: str, namespace: str, token: str, context: ssl.SSLContext | None) -> None:
        self.base = f"{server.rstrip('/')}/apis/ray.io/v1/namespaces/{namespace}/rayjobs"
        self.token, self.context = token, context

    def call(self, method: str, path: str = "", body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.base}{path}", data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, context=self.context, timeout=30) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("message", "")
            except ValueError:
                message = ""
            raise ApiError(f"{method} {req.full_url}: HTTP {exc.code} {message}".strip()) from None


def new_rayjob(template: dict[str, Any], name: str, prefix: str) -> dict[str, Any]:
    """The RayJob to create: the template's labels, annotations and spec, not suspended, under ``name``."""
    meta = template["metadata"]
    spec = {k: v for k, v in template["spec"].items() if k != "suspend"}
    return {
        "apiVersion": template["apiVersion"],
        "kind": "RayJob",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": {**meta.get("labels", {}), SCHEDULE_LABEL: prefix},
            **({"annotations": meta["annotations"]} if meta.get("annotations") else {}),
        },
        "spec": spec,
    }


def prune_finished(api: Api, prefix: str, keep: int) -> list[str]:
    """Delete the finished RayJobs of this schedule beyond the newest ``keep``; running ones are left alone."""
    selector = urllib.parse.quote(f"{SCHEDULE_LABEL}={prefix}")
    items = api.call("GET", f"?labelSelector={selector}").get("items", [])
    finished = [j for j in items if j.get("status", {}).get("jobDeploymentStatus") in TERMINAL]
    finished.sort(key=lambda j: j["metadata"]["creationTimestamp"], reverse=True)
    deleted = []
    for job in finished[keep:]:
        name = job["metadata"]["name"]
        api.call("DELETE", f"/{name}", {"propagationPolicy": "Background"})
        deleted.append(name)
    if deleted:
        log.info("deleted %d finished RayJob(s) of %s: %s", len(deleted), prefix, ", ".join(deleted))
    return deleted


def wait(api: Api, name: str, poll_s: float, timeout_s: float) -> int:
    """Poll the RayJob until KubeRay marks it Complete or Failed; the exit status of the script."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = api.call("GET", f"/{name}").get("status", {})
        deployment, job_status = status.get("jobDeploymentStatus"), status.get("jobStatus")
        log.info("RayJob %s: deployment=%s job=%s", name, deployment, job_status)
        if deployment in TERMINAL:
            log.info("RayJob %s finished: %s %s", name, job_status, status.get("message", ""))
            return 0 if job_status == "SUCCEEDED" else 1
        time.sleep(poll_s)
    log.error("RayJob %s still running after %.0f s; giving up (the RayJob keeps running)", name, timeout_s)
    return 2


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--template", required=True, help="Name of the suspended RayJob to copy.")
    p.add_argument("--prefix", required=True, help="Name prefix of the created RayJobs (and their label).")
    p.add_argument("--keep-finished", type=int, default=10, help="Finished RayJobs of this schedule to keep.")
    p.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE") or "default")
    p.add_argument("--api", default="https://kubernetes.default.svc")
    p.add_argument("--token-file", default=str(SA_DIR / "token"))
    p.add_argument("--ca-file", default=str(SA_DIR / "ca.crt"))
    p.add_argument("--poll-s", type=float, default=30.0)
    p.add_argument("--timeout-s", type=float, default=43200.0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)

    name = f"{args.prefix}-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}"
    if len(name) > MAX_NAME:
        p.error(f"--prefix {args.prefix!r} makes the name {name!r} longer than {MAX_NAME} characters")
    context = ssl.create_default_context(cafile=args.ca_file) if args.api.startswith("https") else None
    api = Api(args.api, args.namespace, Path(args.token_file).read_text().strip(), context)
    try:
        template = api.call("GET", f"/{args.template}")
        try:
            prune_finished(api, args.prefix, args.keep_finished)
        except ApiError as exc:  # cleanup is housekeeping: never let it stop the scheduled run
            log.warning("could not delete old RayJobs: %s", exc)
        created = api.call("POST", "", new_rayjob(template, name, args.prefix))
        log.info("created RayJob %s/%s", args.namespace, created["metadata"]["name"])
        return wait(api, created["metadata"]["name"], args.poll_s, args.timeout_s)
    except ApiError as exc:
        log.error("%s; check the RBAC of the CronJob's service account and the template RayJob", exc)
        return 3


if __name__ == "__main__":
    sys.exit(main())
