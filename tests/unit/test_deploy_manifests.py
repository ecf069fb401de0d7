"""The KubeRay manifests of ``deploy/kuberay``, rendered offline and validated against real schemas.

Every overlay is rendered by the real kustomize (``kubectl kustomize``, which needs no cluster).
RayCluster / RayJob / RayCronJob are validated against the KubeRay v1.7.0 CRD schemas with unknown fields
rejected; built-in kinds with kubernetes-validate in strict mode.
"""

from __future__ import annotations

import copy
import functools
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

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


# -- tests --------------------------------------------------------------------------------------------
def test_overlays_exist_and_render() -> None:
    assert set(OVERLAYS) == {"dev", "production", "raycronjob"}
    for overlay in OVERLAYS:
        kinds = sorted(d["kind"] for d in rendered(overlay))
        assert "RayCluster" in kinds and kinds.count("RayJob") == 3, (overlay, kinds)  # run, train, cron template


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_document_validates(overlay: str) -> None:
    docs = rendered(overlay)
    checked = 0
    for doc in docs:
        if doc["apiVersion"].startswith("ray.io/"):
            assert validate_crd(doc) == [], f"{doc['kind']}/{doc['metadata']['name']}"
        else:
            validate_builtin(doc)
        checked += 1
    assert checked == len(docs) >= 10


@pytest.mark.parametrize(
    ("kind", "path", "bad"),
    [
        ("RayCluster", ("spec", "headGroupSpec"), {"serviceTyp": "ClusterIP"}),
        ("RayCluster", ("spec", "workerGroupSpecs", 0, "template", "spec", "containers", 0), {"imagePullPolcy": "x"}),
        ("RayJob", ("spec",), {"shutdownAfterJobFinish": True}),
        ("RayJob", ("spec",), {"backoffLimit": "three"}),
        ("RayJob", ("spec", "rayClusterSpec", "authOptions"), {"mode": "tokens"}),
        ("RayCronJob", ("spec",), {"concurrencyPolicy": "Forbid"}),  # RayCronJob has none: must fail
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
def test_pod_templates_inside_ray_resources_are_valid_pods(overlay: str) -> None:
    docs = rendered(overlay)
    templates = 0
    for name, spec in ray_clusters(docs):
        groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
        for group in groups:
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": group["template"]["spec"]}
            validate_builtin(pod)
            templates += 1
    assert templates >= 8


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_cluster_shape_security_and_exposure(overlay: str) -> None:
    docs = rendered(overlay)
    namespaces = {d["metadata"].get("namespace") for d in docs}
    assert namespaces == {"sgma-dev" if overlay == "dev" else "sgma"}
    assert not [d for d in docs if d["kind"] == "Ingress"]
    assert not [d for d in docs if d["kind"] == "Service" and d["spec"].get("type") in ("LoadBalancer", "NodePort")]
    clusters = ray_clusters(docs)
    assert len(clusters) >= 4
    for name, spec in clusters:
        assert spec["rayVersion"] == "2.60.0", name
        assert spec["authOptions"] == {"mode": "token"}, name
        head = spec["headGroupSpec"]
        assert head.get("serviceType", "ClusterIP") == "ClusterIP" and not head.get("enableIngress"), name
        assert head["rayStartParams"]["num-cpus"] == "0", name
        head_c = head["template"]["spec"]["containers"][0]
        assert "nvidia.com/gpu" not in head_c["resources"].get("limits", {}), name
        assert head_c["image"].endswith("cpu"), (name, head_c["image"])
        gpu = [g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu"]
        assert len(gpu) == 1, name
        worker = gpu[0]["template"]["spec"]["containers"][0]
        assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1", name
        assert worker["image"].endswith("gpu"), (name, worker["image"])
        assert gpu[0]["rayStartParams"]["num-gpus"] == worker["resources"]["limits"]["nvidia.com/gpu"]
        assert gpu[0]["rayStartParams"]["num-cpus"] == worker["resources"]["limits"]["cpu"]
        for group in (head, *spec["workerGroupSpecs"]):
            pod = group["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
            env = {e["name"]: e for e in pod["containers"][0].get("env", [])}
            for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                assert env[key]["valueFrom"]["secretKeyRef"]["name"] == "sgma-object-store", (name, key)
                assert "value" not in env[key]
    rc = next(spec for name, spec in clusters if name == "sgma")
    assert rc["enableInTreeAutoscaling"] is True
    gpu_pool = rc["workerGroupSpecs"][0]
    assert gpu_pool["minReplicas"] == 0 < gpu_pool["maxReplicas"]
    assert gpu_pool["maxReplicas"] == {"dev": 1, "production": 16, "raycronjob": 16}[overlay]
    # no Secret with credentials is shipped; the README creates it
    assert not [d for d in docs if d["kind"] == "Secret"]


def _rayjob(docs: list[dict[str, Any]], component: str) -> dict[str, Any]:
    jobs = [d for d in docs if d["kind"] == "RayJob"
            and d["metadata"]["labels"]["app.kubernetes.io/component"] == component]
    assert len(jobs) == 1, component
    return jobs[0]


@pytest.mark.parametrize("component", ["run", "train", "reprocess"])
def test_rayjobs_clean_up_retry_and_time_out(component: str) -> None:
    job = _rayjob(rendered("production"), component)["spec"]
    assert job["shutdownAfterJobFinishes"] is True
    assert job["ttlSecondsAfterFinished"] > 0
    assert job["backoffLimit"] >= 1
    assert 3600 <= job["activeDeadlineSeconds"] <= 86400
    assert job["entrypoint"].startswith("sgma-batch ")


def test_train_job_is_multi_gpu_and_resumes_under_a_stable_run_name() -> None:
    docs = rendered("production")
    train = _rayjob(docs, "train")
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
    head = train["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert any(m["mountPath"] == "/data" for m in head["containers"][0]["volumeMounts"])


def test_job_specs_are_mounted_where_the_entrypoints_read_them() -> None:
    docs = rendered("production")
    specs = next(d for d in docs if d["metadata"]["name"] == "sgma-job-specs")
    for component in ("run", "train", "reprocess"):
        job = _rayjob(docs, component)
        head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
        mount = next(m for m in head["containers"][0]["volumeMounts"] if m["name"] == "job-specs")
        volume = next(v for v in head["volumes"] if v["name"] == "job-specs")
        assert volume["configMap"]["name"] == "sgma-job-specs"
        for token in shlex.split(job["spec"]["entrypoint"]):
            if token.startswith(mount["mountPath"] + "/"):
                assert Path(token).name in specs["data"], (component, token)


def test_reprocess_spec_in_the_configmap_is_valid() -> None:
    from sgma_batch.reprocess import ReprocessSpec, expand_spec

    specs = next(d for d in rendered("production") if d["metadata"]["name"] == "sgma-job-specs")["data"]
    spec = ReprocessSpec.model_validate(yaml.safe_load(specs["reprocess.yaml"]))
    entries = expand_spec(spec, Path("/etc/sgma/jobs"))
    assert len(entries) == 12 and all(e.store.startswith("/data/maps/") for e in entries)
    assert entries[0].aoi == "/etc/sgma/jobs/aoi.geojson" and "aoi.geojson" in specs


def test_cronjob_forbids_overlap_and_has_exactly_the_rbac_it_needs() -> None:
    docs = rendered("production")
    cron = next(d for d in docs if d["kind"] == "CronJob")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
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
    # the pod runs the submit script from the mounted ConfigMap on the template RayJob of this namespace
    submit = next(d for d in docs if d["metadata"]["name"] == "sgma-reprocess-submit")
    args = pod["containers"][0]["command"] + pod["containers"][0]["args"]
    assert Path(args[1]).name in submit["data"]
    template = next(d for d in docs if d["kind"] == "RayJob" and d["metadata"]["name"] == args[args.index("--template") + 1])
    assert template["spec"]["suspend"] is True and template["metadata"]["namespace"] == "sgma"
    assert len(f"{args[args.index('--prefix') + 1]}-20250101-000000") <= 47  # KubeRay's RayJob name limit


def test_the_cron_template_and_training_wait_suspended_and_get_the_overlay_images() -> None:
    """The template is an ordinary resource, so the overlay's images reach the RayJobs the cron creates;
    training waits for its chips (the README resumes it); the mosaic run starts at once."""
    docs = rendered("production")
    suspended = sorted(d["metadata"]["name"] for d in docs if d["kind"] == "RayJob" and d["spec"].get("suspend"))
    assert suspended == ["sgma-reprocess-template", "sgma-train"]
    for name, spec in ray_clusters(docs):
        for group in (spec["headGroupSpec"], *spec["workerGroupSpecs"]):
            for c in group["template"]["spec"]["containers"]:
                assert c["image"].startswith("ghcr.io/your-org/sgma-batch:0.1.0-"), (name, c["image"])


def test_raycronjob_overlay_replaces_the_cronjob_with_the_same_job() -> None:
    docs = rendered("raycronjob")
    assert not [d for d in docs if d["kind"] == "CronJob"]
    rcj = next(d for d in docs if d["kind"] == "RayCronJob")
    cron = next(d for d in rendered("production") if d["kind"] == "CronJob")
    assert rcj["spec"]["schedule"] == cron["spec"]["schedule"]
    template = next(d for d in docs if d["kind"] == "RayJob" and d["metadata"]["name"] == "sgma-reprocess-template")
    assert rcj["spec"]["jobTemplate"] == {k: v for k, v in template["spec"].items() if k != "suspend"}


@pytest.mark.parametrize(("overlay", "max_gpu_workers"), [("dev", 1), ("production", 16)])
def test_overlay_patches_change_one_field_and_keep_the_worker_group_whole(overlay: str, max_gpu_workers: int) -> None:
    """A strategic-merge patch would replace the CRD's whole workerGroupSpecs list; the JSON patch must not."""
    base = next(d for d in render(KUBERAY / "base") if d["kind"] == "RayCluster")
    ours = next(d for d in rendered(overlay) if d["kind"] == "RayCluster")
    (b_group,), (o_group,) = base["spec"]["workerGroupSpecs"], ours["spec"]["workerGroupSpecs"]
    assert o_group["maxReplicas"] == max_gpu_workers != b_group["maxReplicas"]
    differing = {k for k in b_group.keys() | o_group.keys() if b_group.get(k) != o_group.get(k)}
    assert differing <= {"maxReplicas", "template"}  # template: the image only
    b_pod, o_pod = b_group["template"]["spec"], o_group["template"]["spec"]
    assert {k for k in b_pod if b_pod[k] != o_pod.get(k)} <= {"containers"}
    assert [c["image"] for c in o_pod["containers"]] != [c["image"] for c in b_pod["containers"]]
    assert "namespace" not in base["metadata"] and ours["metadata"]["namespace"] in ("sgma", "sgma-dev")
