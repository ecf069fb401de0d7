"""The KubeRay manifests of ``deploy/kuberay``, rendered offline and validated against real schemas.

Every overlay is rendered by the real kustomize (``kubectl kustomize``, which needs no cluster).
RayCluster / RayJob / RayCronJob are validated against the KubeRay v1.7.0 CRD schemas with unknown fields
rejected; built-in kinds with kubernetes-validate in strict mode.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

pytestmark = pytest.mark.integration  # renders the overlays with kubectl

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO / ".." / "shared"
KUBERAY = REPO / "deploy" / "kuberay"
CRD_DIR = SHARED / "schemas" / "kuberay-v1.7.0"
OVERLAYS = sorted(p.name for p in (KUBERAY / "overlays").iterdir() if p.is_dir())
K8S_VERSION = "1.33"


# -- rendering with the real kustomize -------------------------------------------------------------------
@functools.cache
def _kustomize(directory: Path) -> str:
    kubectl = shutil.which("kubectl")
    assert kubectl, "rendering deploy/kuberay needs kubectl (its built-in kustomize runs offline); install kubectl"
    proc = subprocess.run([kubectl, "kustomize", str(directory)], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def render(directory: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize DIRECTORY`` as a list of documents (a fresh copy on every call)."""
    return [d for d in yaml.safe_load_all(_kustomize(directory.resolve())) if d]


# -- schemas ------------------------------------------------------------------------------------------
def _close(schema: Any) -> Any:
    """Reject unknown fields: additionalProperties false wherever properties are declared and the schema
    neither preserves unknown fields nor says anything about additional properties itself."""
    if isinstance(schema, dict):
        out = {k: _close(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_close(v) for v in schema]
    return schema


@functools.cache
def crd_validators() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    out = {}
    for path in sorted(CRD_DIR.glob("ray.io_*.yaml")):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            schema = _close(version["schema"]["openAPIV3Schema"])
            # metadata is the ObjectMeta of the API server, not described by the CRD
            schema["properties"]["metadata"] = {"type": "object"}
            api = f"{crd['spec']['group']}/{version['name']}"
            out[(api, crd["spec"]["names"]["kind"])] = jsonschema.Draft7Validator(schema)
    return out


def validate_crd(doc: dict[str, Any]) -> list[str]:
    validator = crd_validators()[(doc["apiVersion"], doc["kind"])]
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
    errors += _cel_rules(doc)
    return errors


def _cel_rules(doc: dict[str, Any]) -> list[str]:
    """The x-kubernetes-validations of the RayJob spec that apply to our fields, hand-translated."""
    spec = doc["spec"].get("jobTemplate", doc["spec"]) if doc["kind"] in ("RayJob", "RayCronJob") else {}
    ds = spec.get("deletionStrategy")
    if ds is not None and not (("onSuccess" in ds and "onFailure" in ds) or "deletionRules" in ds):
        return ["deletionStrategy requires either BOTH onSuccess and onFailure, OR deletionRules"]
    return []


def validate_builtin(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def rendered(overlay: str) -> list[dict[str, Any]]:
    return render(KUBERAY / "overlays" / overlay)


def ray_clusters(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Every RayCluster spec, standalone or inside a RayJob / RayCronJob."""
    out = []
    for d in docs:
        if d["kind"] == "RayCluster":
            out.append((d["metadata"]["name"], d["spec"]))
        elif d["kind"] == "RayJob":
            out.append((d["metadata"]["name"], d["spec"]["rayClusterSpec"]))
        elif d["kind"] == "RayCronJob":
            out.append((d["metadata"]["name"], d["spec"]["jobTemplate"]["rayClusterSpec"]))
    return out


def validate_podmonitor(doc: dict[str, Any]) -> list[str]:
    """The PodMonitor fields we use (no Prometheus Operator schema is vendored): known keys only."""
    errors = []
    if set(doc) - {"apiVersion", "kind", "metadata", "spec"} or set(doc["spec"]) - {"selector", "podMetricsEndpoints",
                                                                                  "namespaceSelector"}:
        errors.append("unknown top-level or spec field")
    for ep in doc["spec"]["podMetricsEndpoints"]:
        if set(ep) - {"port", "path", "interval", "relabelings", "scrapeTimeout"}:
            errors.append(f"unknown endpoint field in {sorted(ep)}")
    return errors


def cluster_of(doc: dict[str, Any]) -> dict[str, Any]:
    return {"RayCluster": lambda: doc["spec"], "RayJob": lambda: doc["spec"]["rayClusterSpec"],
            "RayCronJob": lambda: doc["spec"]["jobTemplate"]["rayClusterSpec"]}[doc["kind"]]()


def job_spec_of(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["jobTemplate"] if doc["kind"] == "RayCronJob" else doc["spec"]


def pods(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Every pod spec the overlay makes Kubernetes run: Ray heads and workers, RayJob submitters, the CronJob's."""
    out = []
    for d in docs:
        name = f"{d['kind']}/{d['metadata']['name']}"
        if d["kind"] in ("RayCluster", "RayJob", "RayCronJob"):
            spec = cluster_of(d)
            out.append((f"{name} head", spec["headGroupSpec"]["template"]["spec"]))
            out += [(f"{name} {g['groupName']}", g["template"]["spec"]) for g in spec["workerGroupSpecs"]]
        if d["kind"] in ("RayJob", "RayCronJob"):
            out.append((f"{name} submitter", job_spec_of(d)["submitterPodTemplate"]["spec"]))
        if d["kind"] == "CronJob":
            out.append((name, d["spec"]["jobTemplate"]["spec"]["template"]["spec"]))
    return out


# -- Pod Security Standards, "restricted" profile (https://kubernetes.io/docs/concepts/security/pod-security-standards/)
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}


def restricted_violations(pod: dict[str, Any], extra_containers: tuple[dict[str, Any], ...] = ()) -> list[str]:
    """What keeps ``pod`` from passing Pod Security "restricted" (empty: it passes)."""
    out = []
    psc = pod.get("securityContext", {})
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            out.append(key)
    for v in pod.get("volumes", []):
        kinds = set(v) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            out.append(f"volume {v['name']}: {sorted(kinds)}")
    containers = [*pod.get("initContainers", []), *pod["containers"], *extra_containers]
    for c in containers:
        csc = c.get("securityContext", {})
        label = c.get("name", "?")
        if csc.get("privileged"):
            out.append(f"{label}: privileged")
        if csc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{label}: allowPrivilegeEscalation is not false")
        caps = csc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            out.append(f"{label}: capabilities not dropped (ALL)")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            out.append(f"{label}: adds {caps['add']}")
        if csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
            out.append(f"{label}: runAsNonRoot is not true")
        if csc.get("runAsUser", psc.get("runAsUser")) == 0:
            out.append(f"{label}: runAsUser 0")
        seccomp = csc.get("seccompProfile", psc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{label}: seccompProfile {seccomp}")
    return out


def _autoscaler(docs_doc: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    spec = cluster_of(docs_doc)
    if not spec.get("enableInTreeAutoscaling"):
        return ()
    return ({"name": "autoscaler", "securityContext": spec["autoscalerOptions"].get("securityContext", {})},)


def all_pods_with_autoscaler(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any], tuple]]:
    out = []
    for name, pod in pods(docs):
        extra = ()
        if name.endswith(" head"):
            doc = next(d for d in docs if f"{d['kind']}/{d['metadata']['name']} head" == name)
            extra = _autoscaler(doc)
        out.append((name, pod, extra))
    return out


def ray_docs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in ("RayCluster", "RayJob", "RayCronJob")]


def rayjob(docs: list[dict[str, Any]], component: str) -> dict[str, Any]:
    jobs = [d for d in docs if d["kind"] in ("RayJob", "RayCronJob")
            and d["metadata"]["labels"]["app.kubernetes.io/component"] == component]
    assert len(jobs) == 1, component
    return jobs[0]


def quantity(value: str | float) -> float:
    """A Kubernetes quantity as a number (CPU in cores, memory in bytes)."""
    text = str(value)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    for suffix in sorted(units, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * units[suffix]
    return float(text)


def pod_requests(pod: dict[str, Any], extra: tuple[dict[str, Any], ...] = ()) -> tuple[float, float]:
    """Summed container requests of a pod (CPU cores, memory bytes)."""
    cpu = mem = 0.0
    for c in [*pod["containers"], *extra]:
        req = c.get("resources", {}).get("requests", {})
        cpu += quantity(req.get("cpu", 0))
        mem += quantity(req.get("memory", 0))
    return cpu, mem


# -- tests --------------------------------------------------------------------------------------------
def test_overlays_exist_and_render() -> None:
    assert set(OVERLAYS) == {"dev", "production", "raycronjob"}
    for overlay in OVERLAYS:
        kinds = sorted(d["kind"] for d in rendered(overlay))
        assert kinds.count("RayCluster") == 1, (overlay, kinds)
        want = {"raycronjob": 2}.get(overlay, 3)  # run, train (+ the CronJob's template RayJob)
        assert kinds.count("RayJob") == want, (overlay, kinds)
        assert ("RayCronJob" in kinds) == (overlay == "raycronjob") and ("CronJob" in kinds) != (overlay == "raycronjob")
        # the Ray pod template itself is never applied (kustomize drops local-config resources)
        assert not [d for d in rendered(overlay) if d["metadata"]["name"] == "sgma-ray-template"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_document_validates(overlay: str) -> None:
    docs = rendered(overlay)
    checked = 0
    for doc in docs:
        if doc["apiVersion"].startswith("ray.io/"):
            assert validate_crd(doc) == [], f"{doc['kind']}/{doc['metadata']['name']}"
        elif doc["kind"] == "PodMonitor":
            assert validate_podmonitor(doc) == []
        else:
            validate_builtin(doc)
        checked += 1
    assert checked == len(docs) >= 10


def test_the_pod_template_itself_is_a_valid_rayjob() -> None:
    template = yaml.safe_load((KUBERAY / "base" / "ray-template.yaml").read_text())
    assert validate_crd(template) == []


@pytest.mark.parametrize(
    ("kind", "path", "bad"),
    [
        ("RayCluster", ("spec", "headGroupSpec"), {"serviceTyp": "ClusterIP"}),
        ("RayCluster", ("spec", "workerGroupSpecs", 0, "template", "spec", "containers", 0), {"imagePullPolcy": "x"}),
        ("RayJob", ("spec",), {"shutdownAfterJobFinish": True}),
        ("RayJob", ("spec",), {"backoffLimit": "three"}),
        ("RayJob", ("spec", "rayClusterSpec", "authOptions"), {"mode": "tokens"}),
        ("RayCronJob", ("spec",), {"concurrencyPolicy": "Forbid"}),  # RayCronJob has none: must fail
        ("RayCronJob", ("spec", "jobTemplate"), {"deletionStrategy": {"onSuccess": {"policy": "DeleteSelf"}}}),
    ],
)
def test_a_misspelt_or_wrong_field_fails_crd_validation(kind: str, path: tuple, bad: dict) -> None:
    docs = rendered("raycronjob")
    doc = copy.deepcopy(next(d for d in docs if d["kind"] == kind))
    assert validate_crd(doc) == []
    node = doc
    for key in path:
        node = node[key]
    node.update(bad)
    assert validate_crd(doc) != []


def test_a_misspelt_field_fails_builtin_validation() -> None:
    cron = copy.deepcopy(next(d for d in rendered("production") if d["kind"] == "CronJob"))
    validate_builtin(cron)
    cron["spec"]["concurrencyPolicyy"] = cron["spec"].pop("concurrencyPolicy")
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_builtin(cron)
    pod = copy.deepcopy(next(d for d in rendered("production") if d["kind"] == "CronJob"))
    pod["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["comand"] = ["x"]
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_builtin(pod)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_is_a_valid_pod(overlay: str) -> None:
    docs = rendered(overlay)
    found = pods(docs)
    for name, spec in found:
        validate_builtin({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": spec})
    assert len(found) >= 10


# -- 2. Pod Security "restricted", credentials, identity, storage ---------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_passes_pod_security_restricted(overlay: str) -> None:
    """Head, workers, the autoscaler sidecar, the log shipper, KubeRay's submitter and the CronJob's pod."""
    checked = all_pods_with_autoscaler(rendered(overlay))
    names = {n.split(" ", 1)[-1] if " " in n else "cron" for n, _, _ in checked}
    assert {"head", "gpu", "submitter", "cron"} <= names or overlay == "raycronjob"
    for name, pod, extra in checked:
        assert restricted_violations(pod, extra) == [], name
    assert sum(1 for _, _, extra in checked if extra) >= 3  # the autoscaler of every cluster was checked


def test_the_restricted_check_catches_each_violation() -> None:
    docs = rendered("production")
    _, head, autoscaler = next(p for p in all_pods_with_autoscaler(docs) if p[2])
    assert restricted_violations(head, autoscaler) == []
    for mutate in (
        lambda p, a: p["securityContext"].pop("seccompProfile"),
        lambda p, a: p["containers"][1]["securityContext"].pop("capabilities"),
        lambda p, a: p["containers"][0]["securityContext"].update(allowPrivilegeEscalation=True),
        lambda p, a: p["securityContext"].pop("runAsNonRoot"),
        lambda p, a: a[0]["securityContext"].pop("seccompProfile") and p["securityContext"].pop("seccompProfile"),
        lambda p, a: a[0]["securityContext"].pop("allowPrivilegeEscalation"),
        lambda p, a: p["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
    ):
        pod, extra = copy.deepcopy(head), copy.deepcopy(autoscaler)
        mutate(pod, extra)
        assert restricted_violations(pod, extra) != []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_identity_credentials_and_storage(overlay: str) -> None:
    docs = rendered(overlay)
    accounts = {d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"}
    used = {}
    for d in ray_docs(docs):
        spec = cluster_of(d)
        head_sa = spec["headGroupSpec"]["template"]["spec"]["serviceAccountName"]
        assert head_sa in accounts and head_sa != "default"
        for g in spec["workerGroupSpecs"]:
            assert g["template"]["spec"]["serviceAccountName"] == head_sa
            assert g["template"]["spec"]["automountServiceAccountToken"] is False
        used.setdefault(head_sa, set()).add(d["metadata"]["labels"]["app.kubernetes.io/component"])
    # one service account per workload (a template RayJob and the runs it makes are the same workload)
    assert all(len(components) == 1 for components in used.values()), used
    assert len(used) == len({c for cs in used.values() for c in cs}) >= 4
    # credentials are optional everywhere (public COGs, workload identity), never inline
    for name, pod in pods(docs):
        for c in pod["containers"]:
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref is not None:
                    assert ref["optional"] is True, (name, env["name"])
                assert not (env["name"].startswith("AWS_SECRET") and "value" in env)
    assert not [d for d in docs if d["kind"] == "Secret"]
    pvc = next(d for d in docs if d["kind"] == "PersistentVolumeClaim")
    # several nodes mount it at once, except on the one-node dev cluster (kind's local-path is RWO only)
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce" if overlay == "dev" else "ReadWriteMany"]
    assert pvc["spec"]["storageClassName"] == {"dev": "standard"}.get(overlay, "efs-sc")


# -- 1. exit policy, deadlines, schedule ------------------------------------------------------------------
def _cron_period_s(schedule: str) -> int:
    minute, hour, dom, month, dow = schedule.split()
    assert minute.isdigit() and hour.isdigit() and (dom, month, dow) == ("*", "*", "*"), schedule
    return 86400  # daily


def _worst_case_s(job: dict[str, Any]) -> int:
    return (job.get("backoffLimit", 0) + 1) * job["activeDeadlineSeconds"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rayjob_has_both_deadlines_and_a_bounded_retry(overlay: str) -> None:
    for d in rendered(overlay):
        if d["kind"] not in ("RayJob", "RayCronJob"):
            continue
        job = job_spec_of(d)
        assert 0 < job["preRunningDeadlineSeconds"] < job["activeDeadlineSeconds"] <= 86400, d["metadata"]["name"]
        assert 0 <= job["backoffLimit"] <= 3
        assert job["submissionMode"] == "K8sJobMode" and job["entrypoint"].startswith("sgma-batch ")
        if d["kind"] == "RayJob":
            assert job["shutdownAfterJobFinishes"] is True and job["ttlSecondsAfterFinished"] > 0


def test_reprocess_deadlines_agree_across_rayjob_submit_script_job_and_schedule() -> None:
    """Worst RayJob run < the submit pod's wait < its Job's deadline < the next schedule."""
    docs = rendered("production")
    cron = next(d for d in docs if d["kind"] == "CronJob")
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    template = next(d for d in docs if d["kind"] == "RayJob" and d["metadata"]["name"] == args[args.index("--template") + 1])
    assert "--timeout-s" not in args  # the wait is derived from the template, so the two cannot disagree
    grace = float(args[args.index("--grace-s") + 1])
    submit = _load_submit_script()
    wait_s = submit.worst_case_s(template["spec"]) + grace
    assert submit.worst_case_s(template["spec"]) == _worst_case_s(template["spec"])
    job_deadline = cron["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"]
    assert _worst_case_s(template["spec"]) < wait_s < job_deadline
    assert job_deadline + cron["spec"]["startingDeadlineSeconds"] < _cron_period_s(cron["spec"]["schedule"])
    assert cron["spec"]["concurrencyPolicy"] == "Forbid" and cron["spec"]["jobTemplate"]["spec"]["backoffLimit"] == 0


def test_raycronjob_runs_end_before_the_next_schedule_and_prune_themselves() -> None:
    rcj = next(d for d in rendered("raycronjob") if d["kind"] == "RayCronJob")
    job = rcj["spec"]["jobTemplate"]
    assert _worst_case_s(job) < _cron_period_s(rcj["spec"]["schedule"])  # the overlap guard RayCronJob lacks
    rules = job["deletionStrategy"]["deletionRules"]
    self_deleted = {next(iter(r["condition"].items())) for r in rules if r["policy"] == "DeleteSelf"}
    assert self_deleted == {("jobStatus", "SUCCEEDED"), ("jobStatus", "FAILED"), ("jobDeploymentStatus", "Failed")}
    cluster_deleted = {next(iter(r["condition"].items())) for r in rules if r["policy"] == "DeleteCluster"}
    assert cluster_deleted == self_deleted
    assert "shutdownAfterJobFinishes" not in job  # replaced by the rules


def test_scheduled_and_run_entrypoints_accept_partial_results() -> None:
    for overlay in OVERLAYS:
        for d in rendered(overlay):
            if d["kind"] in ("RayJob", "RayCronJob"):
                argv = shlex.split(job_spec_of(d)["entrypoint"])
                if argv[1] in ("run", "reprocess"):
                    assert "--allow-partial" in argv, (overlay, d["metadata"]["name"])


# -- 3. node sizing -------------------------------------------------------------------------------------
# Documented node types (deploy/README.md, "Nodes"): vCPU, GiB, max pods (EKS VPC CNI). Allocatable after the
# kubelet's reservations as EKS computes them, minus a budget for the usual DaemonSets (CNI, kube-proxy, CSI
# node drivers, NVIDIA device plugin, DCGM and node exporters, a log agent).
NODES = {"g6.2xlarge": (8, 32, 58), "m7i.xlarge": (4, 16, 58)}
DAEMONSET_BUDGET = (0.6, 1.5 * 2**30)


def allocatable(instance: str) -> tuple[float, float]:
    vcpu, gib, max_pods = NODES[instance]
    reserved_cpu = 0.06 + 0.01 + 0.005 * 2 + 0.0025 * max(vcpu - 4, 0)  # EKS: 6 % of core 1, 1 %, 0.5 % x 2, 0.25 %
    memory = gib * 2**30 * 0.96  # what the kernel reports of the nominal size (conservative)
    reserved_mem = (255 + 11 * max_pods) * 2**20 + 100 * 2**20  # kube-reserved + eviction threshold
    return vcpu - reserved_cpu - DAEMONSET_BUDGET[0], memory - reserved_mem - DAEMONSET_BUDGET[1]


def _group_pods(spec: dict[str, Any], doc: dict[str, Any]) -> tuple[tuple, tuple]:
    head = spec["headGroupSpec"]["template"]["spec"]
    worker = spec["workerGroupSpecs"][0]["template"]["spec"]
    return pod_requests(head, _autoscaler_with_resources(doc)), pod_requests(worker)


def _autoscaler_with_resources(doc: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    spec = cluster_of(doc)
    return ({"resources": spec["autoscalerOptions"]["resources"]},) if spec.get("enableInTreeAutoscaling") else ()


@pytest.mark.parametrize("overlay", ["production", "raycronjob"])
def test_production_pods_fit_the_documented_instance_types(overlay: str) -> None:
    for d in ray_docs(rendered(overlay)):
        spec = cluster_of(d)
        head, worker = _group_pods(spec, d)
        assert head[0] <= allocatable("m7i.xlarge")[0] and head[1] <= allocatable("m7i.xlarge")[1], head
        assert worker[0] <= allocatable("g6.2xlarge")[0] and worker[1] <= allocatable("g6.2xlarge")[1], worker
        group = spec["workerGroupSpecs"][0]
        ray_c = group["template"]["spec"]["containers"][0]
        assert ray_c["resources"]["requests"] == ray_c["resources"]["limits"]  # Guaranteed QoS for the GPU pods
        assert quantity(group["rayStartParams"]["num-cpus"]) == quantity(ray_c["resources"]["limits"]["cpu"])
        shm = next(v for v in group["template"]["spec"]["volumes"] if v["name"] == "dshm")
        assert quantity(shm["emptyDir"]["sizeLimit"]) < quantity(ray_c["resources"]["limits"]["memory"]) / 2


def test_the_checks_would_catch_the_old_8_cpu_32_gib_worker() -> None:
    assert 8 > allocatable("g6.2xlarge")[0] and 32 * 2**30 > allocatable("g6.2xlarge")[1]


def test_dev_fits_on_one_gpu_node() -> None:
    """The long-lived cluster's head and one RayJob (head, one GPU worker, submitter) together on one node."""
    docs = rendered("dev")
    cluster = next(d for d in docs if d["kind"] == "RayCluster")
    cpu = mem = 0.0
    for d in ray_docs(docs):
        spec = cluster_of(d)
        for g in spec["workerGroupSpecs"]:
            assert g["maxReplicas"] == 1 and g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    head, _ = _group_pods(cluster_of(cluster), cluster)
    run = rayjob(docs, "run")
    job_head, job_worker = _group_pods(cluster_of(run), run)
    submitter = pod_requests(run["spec"]["submitterPodTemplate"]["spec"])
    for part in (head, job_head, job_worker, submitter):
        cpu, mem = cpu + part[0], mem + part[1]
    node = allocatable("g6.2xlarge")
    assert cpu <= node[0] and mem <= node[1], (cpu, mem / 2**30, node)
    train = rayjob(docs, "train")
    specs = next(d for d in docs if d["metadata"]["name"] == "sgma-job-specs")["data"]
    assert yaml.safe_load(specs["train.yaml"])["workers"] == 1 == cluster_of(train)["workerGroupSpecs"][0]["replicas"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gpu_entrypoints_ask_for_one_gpu_per_actor_and_as_many_actors_as_workers(overlay: str) -> None:
    docs = rendered(overlay)
    run = rayjob(docs, "run")
    argv = shlex.split(run["spec"]["entrypoint"])
    max_workers = cluster_of(run)["workerGroupSpecs"][0]["maxReplicas"]
    assert argv[argv.index("--gpus-per-actor") + 1] == "1"
    assert int(argv[argv.index("--max-actors") + 1]) == max_workers
    assert argv[argv.index("--address") + 1] == "auto" and argv[argv.index("--out") + 1].startswith("s3://")
    specs = next(d for d in docs if d["metadata"]["name"] == "sgma-job-specs")["data"]
    reprocess = yaml.safe_load(specs["reprocess.yaml"])
    assert reprocess["address"] == "auto" and reprocess["gpus_per_actor"] == 1
    assert reprocess["max_actors"] == cluster_of(rayjob(docs, "reprocess"))["workerGroupSpecs"][0]["maxReplicas"]
    assert all(s["path"].startswith("s3://") for s in reprocess["stores"])


# -- 7. one pod template; nothing starts a GPU by itself ----------------------------------------------------
def test_the_ray_pod_is_written_once_in_the_sources() -> None:
    sources = [p for p in KUBERAY.rglob("*.yaml")]
    holders = {p.relative_to(KUBERAY).as_posix() for p in sources if "smoke-test" not in p.parts
               and ("image: sgma-batch-gpu" in p.read_text() or "name: ray-head" in p.read_text())}
    assert holders == {"base/ray-template.yaml"}
    assert not [p for p in sources if "containers:" in p.read_text() and "ray.io" in p.read_text()
                and p.name != "ray-template.yaml"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_ray_cluster_gets_the_same_pods(overlay: str) -> None:
    docs = ray_docs(rendered(overlay))
    def strip(pod: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in pod.items() if k != "serviceAccountName"}
    heads = [strip(cluster_of(d)["headGroupSpec"]["template"]["spec"]) for d in docs]
    workers = [strip(cluster_of(d)["workerGroupSpecs"][0]["template"]["spec"]) for d in docs]
    assert all(h == heads[0] for h in heads) and all(w == workers[0] for w in workers)
    jobs = [job_spec_of(d)["submitterPodTemplate"] for d in docs if d["kind"] != "RayCluster"]
    assert jobs and all(j == jobs[0] for j in jobs)
    for d in docs:
        spec = cluster_of(d)
        assert spec["rayVersion"] == "2.60.0" and spec["authOptions"] == {"mode": "token"}
        assert spec["headGroupSpec"]["serviceType"] == "ClusterIP" and not spec["headGroupSpec"].get("enableIngress")
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_applying_an_overlay_starts_no_gpu(overlay: str) -> None:
    docs = rendered(overlay)
    for d in docs:
        if d["kind"] == "RayJob":
            assert d["spec"]["suspend"] is True, d["metadata"]["name"]
        if d["kind"] == "RayCluster":
            assert all(g["replicas"] == 0 == g["minReplicas"] for g in d["spec"]["workerGroupSpecs"])
        if d["kind"] == "CronJob" and overlay == "dev":
            assert d["spec"]["suspend"] is True


# -- images ---------------------------------------------------------------------------------------------
def _images(docs: list[dict[str, Any]]) -> set[str]:
    return {c["image"] for _, pod in pods(docs) for c in pod["containers"]}


def test_image_tags_are_the_same_everywhere() -> None:
    prod, rcj = _images(rendered("production")), _images(rendered("raycronjob"))
    ours = {i for i in prod if "sgma-batch" in i}
    assert ours == {"ghcr.io/your-org/sgma-batch:0.1.0-cpu", "ghcr.io/your-org/sgma-batch:0.1.0-gpu"}
    assert {i for i in rcj if "sgma-batch" in i} == ours and rcj <= prod
    aws = yaml.safe_load((REPO / "deploy" / "ray-cluster-aws.yaml").read_text())["docker"]
    assert {aws["head_image"], aws["worker_image"]} == ours
    readme = (REPO / "deploy" / "README.md").read_text()
    for image in ours:
        assert f"-t {image}" in readme or f"-t {image} " in readme, image
    for image in prod | _images(rendered("dev")):
        assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), image
    # no hard-coded registry, tag or namespace in the sources: the overlays' images/namespace decide
    for p in KUBERAY.rglob("*.yaml"):
        if "overlays" not in p.parts and "smoke-test" not in p.parts:  # (the smoke test's tag: test_deploy_image)
            text = p.read_text()
            assert "ghcr.io" not in text and "namespace: sgma" not in text, p


# -- 6. observability -----------------------------------------------------------------------------------
def test_prometheus_scrapes_every_ray_pod_and_the_dashboard_reads_our_metrics() -> None:
    docs = rendered("production")
    monitor = next(d for d in docs if d["kind"] == "PodMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    port = monitor["spec"]["podMetricsEndpoints"][0]["port"]
    for d in ray_docs(docs):
        spec = cluster_of(d)
        for group in (spec["headGroupSpec"], *spec["workerGroupSpecs"]):
            labels = {**group["template"]["metadata"]["labels"], "ray.io/is-ray-node": "yes"}  # KubeRay adds the latter
            assert selector.items() <= labels.items()
            ports = {p["name"]: p["containerPort"] for p in group["template"]["spec"]["containers"][0]["ports"]}
            assert str(ports[port]) == group["rayStartParams"]["metrics-export-port"]
    board = json.loads(next(d for d in docs if d["metadata"]["name"] == "sgma-grafana-dashboard")["data"]
                       ["sgma-batch-dashboard.json"])
    exprs = " ".join(t["expr"] for p in board["panels"] for t in p["targets"])
    from sgma_batch import metrics

    defined = re.findall(r'(Counter|Gauge|Histogram)\(\s*"(\w+)"', Path(metrics.__file__).read_text())
    assert len(defined) == 5
    for kind, name in defined:  # Ray exports them with its prefix, counters as _total, histograms as buckets
        exported = "ray_" + name + {"Counter": "_total", "Gauge": "", "Histogram": "_bucket"}[kind]
        assert exported in exprs, exported


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ray_logs_are_shipped_off_the_pod(overlay: str) -> None:
    docs = rendered(overlay)
    conf = next(d for d in docs if d["metadata"]["name"] == "sgma-log-shipper")["data"]["fluent-bit.conf"]
    tail = re.search(r"^\s*Path\s+(\S+)", conf, flags=re.MULTILINE).group(1)
    for d in ray_docs(docs):
        spec = cluster_of(d)
        for group in (spec["headGroupSpec"], *spec["workerGroupSpecs"]):
            pod = group["template"]["spec"]
            ray_c, shipper = pod["containers"][0], next(c for c in pod["containers"] if c["name"] == "log-shipper")
            ray_logs = next(m for m in ray_c["volumeMounts"] if m["mountPath"] == "/tmp/ray")
            shipped = next(m for m in shipper["volumeMounts"] if m["name"] == ray_logs["name"])
            assert tail.startswith(shipped["mountPath"] + "/") and shipped["readOnly"] is True
            assert re.search(r"Name\s+stdout", conf)


def test_reprocess_reports_are_dated() -> None:
    for overlay in ("production", "raycronjob"):
        argv = shlex.split(job_spec_of(rayjob(rendered(overlay), "reprocess"))["entrypoint"])
        assert "{started}" in argv[argv.index("--report") + 1]


# -- the jobs' own inputs -------------------------------------------------------------------------------
def test_train_job_is_multi_gpu_and_resumes_under_a_stable_run_name() -> None:
    docs = rendered("production")
    train = rayjob(docs, "train")
    workers = train["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert workers["minReplicas"] == workers["maxReplicas"] >= 2
    assert train["metadata"]["name"] == "sgma-train" and "generateName" not in train["metadata"]
    specs = next(d for d in docs if d["metadata"]["name"] == "sgma-job-specs")["data"]
    from sgma_batch.train import TrainSpec

    argv = shlex.split(train["spec"]["entrypoint"])
    spec_file = Path(argv[argv.index("--config") + 1]).name
    spec = TrainSpec.model_validate(yaml.safe_load(specs[spec_file]))  # the train command's own schema
    assert spec.gpu is True and spec.workers == workers["maxReplicas"]
    assert str(spec.storage).startswith("/data/") and "{" not in spec.name  # fixed: a retry finds the same run


def test_job_specs_are_mounted_where_the_entrypoints_read_them() -> None:
    docs = rendered("production")
    specs = next(d for d in docs if d["metadata"]["name"] == "sgma-job-specs")
    for component in ("run", "train", "reprocess"):
        job = rayjob(docs, component)
        head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
        mount = next(m for m in head["containers"][0]["volumeMounts"] if m["name"] == "job-specs")
        volume = next(v for v in head["volumes"] if v["name"] == "job-specs")
        assert volume["configMap"]["name"] == "sgma-job-specs"
        for token in shlex.split(job["spec"]["entrypoint"]):
            if token.startswith(mount["mountPath"] + "/"):
                assert Path(token).name in specs["data"], (component, token)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_reprocess_spec_in_the_configmap_is_valid(overlay: str) -> None:
    from sgma_batch.reprocess import ReprocessSpec, expand_spec

    specs = next(d for d in rendered(overlay) if d["metadata"]["name"] == "sgma-job-specs")["data"]
    spec = ReprocessSpec.model_validate(yaml.safe_load(specs["reprocess.yaml"]))
    entries = expand_spec(spec, Path("/etc/sgma/jobs"))
    assert len(entries) == 12 and all(e.store.startswith("s3://") for e in entries)
    assert entries[0].aoi == "/etc/sgma/jobs/aoi.geojson" and "aoi.geojson" in specs
    from sgma_batch.reprocess import build_run_spec

    run = build_run_spec(entries[0])  # what each entry runs: on the job's cluster, one GPU per actor
    assert run.address == "auto" and run.gpus_per_actor == 1 and run.max_actors == spec.max_actors


def test_cronjob_has_exactly_the_rbac_it_needs() -> None:
    docs = rendered("production")
    cron = next(d for d in docs if d["kind"] == "CronJob")
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    sa = pod["serviceAccountName"]
    assert any(d["kind"] == "ServiceAccount" and d["metadata"]["name"] == sa for d in docs)
    binding = next(d for d in docs if d["kind"] == "RoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": "sgma"}]
    role = next(d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == binding["roleRef"]["name"])
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
               for v in rule["verbs"]}
    # exactly what submit_rayjob.py calls: GET template/status, list+delete old runs, create the new one
    assert granted == {("ray.io", "rayjobs", v) for v in ("get", "list", "create", "delete")}
    # no Ray pod can use that account
    assert sa not in {cluster_of(d)["headGroupSpec"]["template"]["spec"]["serviceAccountName"] for d in ray_docs(docs)}
    submit = next(d for d in docs if d["metadata"]["name"] == "sgma-reprocess-submit" and d["kind"] == "ConfigMap")
    args = pod["containers"][0]["command"] + pod["containers"][0]["args"]
    assert Path(args[1]).name in submit["data"]
    assert submit["data"]["submit_rayjob.py"] == SUBMIT_SCRIPT.read_text()
    assert pod["containers"][0]["image"].startswith("python:3.11")  # a slim image, not the multi-GB CPU image
    template = next(d for d in docs if d["kind"] == "RayJob" and d["metadata"]["name"] == args[args.index("--template") + 1])
    assert template["spec"]["suspend"] is True and template["metadata"]["namespace"] == "sgma"
    assert len(f"{args[args.index('--prefix') + 1]}-20250101-000000") <= 47  # KubeRay's RayJob name limit


def test_raycronjob_overlay_has_the_same_job_and_none_of_the_cronjob_parts() -> None:
    docs = rendered("raycronjob")
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for kind in ("CronJob", "Role", "RoleBinding"):
        assert not [n for n in names if n[0] == kind], kind
    assert ("ConfigMap", "sgma-reprocess-submit") not in names and ("RayJob", "sgma-reprocess-template") not in names
    rcj = next(d for d in docs if d["kind"] == "RayCronJob")
    prod = rendered("production")
    cron = next(d for d in prod if d["kind"] == "CronJob")
    template = next(d for d in prod if d["kind"] == "RayJob" and d["metadata"]["name"] == "sgma-reprocess-template")
    assert rcj["spec"]["schedule"] == cron["spec"]["schedule"] and rcj["metadata"]["namespace"] == "sgma"
    lifecycle = {"suspend", "shutdownAfterJobFinishes", "ttlSecondsAfterFinished", "deletionStrategy"}
    assert {k: v for k, v in rcj["spec"]["jobTemplate"].items() if k not in lifecycle} == \
        {k: v for k, v in template["spec"].items() if k not in lifecycle}


SUBMIT_SCRIPT = KUBERAY / "components" / "reprocess-cronjob" / "submit_rayjob.py"


def _load_submit_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("submit_rayjob", SUBMIT_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
