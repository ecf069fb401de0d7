"""Create a RayJob from a suspended template RayJob and wait for its outcome (the reprocess CronJob's pod).

Talks to the Kubernetes API with the pod's service-account token (standard library only). In order:
1. overlap guard: when a RayJob this schedule created earlier (label ``sgma-batch/scheduled-by=<prefix>``) is
   still active, create nothing and exit 4;
2. history: delete this schedule's finished RayJobs beyond the newest ``--keep-finished``;
3. create the copy of the template (without ``suspend``) and poll it until it ends.

How long to wait comes from the template: KubeRay restarts ``activeDeadlineSeconds`` per retry, so a run ends
within ``(backoffLimit + 1) x activeDeadlineSeconds``; the script waits that plus ``--grace-s``.

Every RayJob state (KubeRay 1.7 ``jobDeploymentStatus``) is handled:
  "" (new), Initializing, Waiting, Running, Retrying, Suspending  -> keep polling
  Complete with jobStatus SUCCEEDED                                -> exit 0
  Complete with FAILED or STOPPED, Failed (e.g. DeadlineExceeded)  -> exit 1
  ValidationFailed (the spec is refused; it never changes again)   -> exit 1
  Suspended (someone suspended the run)                            -> exit 1
  the RayJob deleted while waiting                                 -> exit 1
  an unknown state                                                 -> logged, keep polling
Exit status: 0 succeeded, 1 failed or stopped, 2 still running at the end of the wait (the RayJob keeps
running), 3 the Kubernetes API refused a request, 4 skipped because an earlier run is still active.
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
FINISHED = {"Complete", "Failed", "ValidationFailed"}  # never change again
ACTIVE = {"", "Initializing", "Waiting", "Running", "Retrying", "Suspending"}
STOPPED = {"Suspended"}  # not running, and will not run until someone resumes it
EXIT_OK, EXIT_FAILED, EXIT_TIMEOUT, EXIT_API, EXIT_OVERLAP = 0, 1, 2, 3, 4
SCHEDULE_LABEL = "sgma-batch/scheduled-by"
MAX_NAME = 47  # KubeRay refuses longer RayJob names (it derives cluster and pod names from them)


class ApiError(RuntimeError):
    """The Kubernetes API answered with an error status."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


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
            raise ApiError(f"{method} {req.full_url}: HTTP {exc.code} {message}".strip(), exc.code) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            raise ApiError(f"{method} {req.full_url}: {getattr(exc, 'reason', exc)}") from None


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


def schedule_jobs(api: Api, prefix: str) -> list[dict[str, Any]]:
    """The RayJobs this schedule created (by label), newest first."""
    selector = urllib.parse.quote(f"{SCHEDULE_LABEL}={prefix}")
    items = api.call("GET", f"?labelSelector={selector}").get("items", [])
    return sorted(items, key=lambda j: j["metadata"]["creationTimestamp"], reverse=True)


def deployment_status(job: dict[str, Any]) -> str:
    return job.get("status", {}).get("jobDeploymentStatus", "")


def active_runs(jobs: list[dict[str, Any]]) -> list[str]:
    """Names of the runs that still hold (or will get) a Ray cluster: neither finished nor suspended."""
    return [j["metadata"]["name"] for j in jobs if deployment_status(j) not in FINISHED | STOPPED]


def prune_finished(api: Api, jobs: list[dict[str, Any]], keep: int) -> list[str]:
    """Delete the finished RayJobs among ``jobs`` (newest first) beyond the newest ``keep``."""
    finished = [j for j in jobs if deployment_status(j) in FINISHED]
    deleted = []
    for job in finished[keep:]:
        name = job["metadata"]["name"]
        api.call("DELETE", f"/{name}", {"propagationPolicy": "Background"})
        deleted.append(name)
    if deleted:
        log.info("deleted %d finished RayJob(s): %s", len(deleted), ", ".join(deleted))
    return deleted


def worst_case_s(spec: dict[str, Any]) -> float:
    """How long a RayJob with this spec can run: KubeRay restarts activeDeadlineSeconds on every retry."""
    deadline = spec.get("activeDeadlineSeconds")
    if not deadline:
        raise ValueError("the template RayJob has no activeDeadlineSeconds: the wait would be unbounded")
    return float((int(spec.get("backoffLimit", 0)) + 1) * int(deadline))


def outcome(status: dict[str, Any]) -> int | None:
    """The exit status for a RayJob status, or None while it is still on its way."""
    deployment, job_status = status.get("jobDeploymentStatus", ""), status.get("jobStatus", "")
    if deployment == "Complete":
        return EXIT_OK if job_status == "SUCCEEDED" else EXIT_FAILED
    if deployment in FINISHED or deployment in STOPPED:
        return EXIT_FAILED
    if deployment not in ACTIVE:
        log.warning("unknown RayJob state %r (a newer KubeRay?); still waiting", deployment)
    return None


def wait(api: Api, name: str, poll_s: float, timeout_s: float, api_retries: int = 5) -> int:
    """Poll the RayJob until it ends; the exit status of the script. Transient API errors are retried."""
    deadline = time.monotonic() + timeout_s
    errors = 0
    while True:
        try:
            status = api.call("GET", f"/{name}").get("status", {})
            errors = 0
        except ApiError as exc:
            if exc.code == 404:
                log.error("RayJob %s was deleted while it ran", name)
                return EXIT_FAILED
            errors += 1
            if errors > api_retries or exc.code in (401, 403):
                raise
            log.warning("%s (retry %d of %d)", exc, errors, api_retries)
            status = None
        if status is not None:
            log.info("RayJob %s: deployment=%s job=%s", name, status.get("jobDeploymentStatus", ""),
                     status.get("jobStatus", ""))
            code = outcome(status)
            if code is not None:
                log.info("RayJob %s ended: %s %s %s", name, status.get("jobDeploymentStatus"),
                         status.get("jobStatus", ""), " ".join(filter(None, (status.get("reason"), status.get("message")))))
                return code
        if time.monotonic() >= deadline:
            log.error("RayJob %s still running after %.0f s; giving up (the RayJob keeps running)", name, timeout_s)
            return EXIT_TIMEOUT
        time.sleep(poll_s)


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
    p.add_argument("--grace-s", type=float, default=900.0,
                   help="Wait this long past the template's worst case ((backoffLimit + 1) x activeDeadlineSeconds).")
    p.add_argument("--timeout-s", type=float, default=None, help="Wait at most this long (default: from the template).")
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
            timeout_s = args.timeout_s if args.timeout_s is not None else worst_case_s(template["spec"]) + args.grace_s
        except ValueError as exc:
            log.error("%s", exc)
            return EXIT_FAILED
        jobs = schedule_jobs(api, args.prefix)
        running = active_runs(jobs)
        if running:
            log.error("an earlier run of this schedule is still active (%s); not starting another", ", ".join(running))
            return EXIT_OVERLAP
        try:
            prune_finished(api, jobs, args.keep_finished)
        except ApiError as exc:  # cleanup is housekeeping: never let it stop the scheduled run
            log.warning("could not delete old RayJobs: %s", exc)
        created = api.call("POST", "", new_rayjob(template, name, args.prefix))
        log.info("created RayJob %s/%s; waiting up to %.0f s", args.namespace, created["metadata"]["name"], timeout_s)
        return wait(api, created["metadata"]["name"], args.poll_s, timeout_s)
    except ApiError as exc:
        log.error("%s; check the RBAC of the CronJob's service account and the template RayJob", exc)
        return EXIT_API


if __name__ == "__main__":
    sys.exit(main())
