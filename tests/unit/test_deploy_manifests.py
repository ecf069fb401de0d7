"""The KubeRay manifests of ``deploy/kuberay``, rendered offline and validated against real schemas.

kubectl/kustomize are not available here, so :func:`render` implements the subset of kustomize the
manifests use (resources, namespace, labels, images, configMapGenerator, strategic-merge patches with
lists merged by ``name``/``groupName`` and ``$patch: delete``). RayCluster / RayJob / RayCronJob are
validated against the KubeRay v1.7.0 CRD schemas with unknown fields rejected; built-in kinds with
kubernetes-validate in strict mode.
"""

from __future__ import annotations

import copy
import functools
import json
import shlex
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
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PersistentVolume"}
LIST_KEYS = ("name", "groupName")


# -- a minimal kustomize ------------------------------------------------------------------------------
def _load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _merge(base: Any, patch: Any) -> Any:
    """Strategic merge for the shapes used here: maps recursively, lists of named maps by key."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = _merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(patch, list) and patch and all(isinstance(p, dict) for p in patch):
        key = next((k for k in LIST_KEYS if all(k in p for p in patch) and all(k in b for b in base)), None)
        if key is not None:
            out = [copy.deepcopy(b) for b in base]
            for item in patch:
                idx = next((i for i, b in enumerate(out) if b[key] == item[key]), None)
                if idx is None:
                    out.append(copy.deepcopy(item))
                else:
                    out[idx] = _merge(out[idx], item)
            return out
    return copy.deepcopy(patch)


def _ident(doc: dict[str, Any]) -> tuple[str, str, str]:
    return doc["apiVersion"], doc["kind"], doc["metadata"]["name"]


def _set_images(node: Any, images: list[dict[str, str]]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                for c in value:
                    name = c.get("image", "").split(":")[0]
                    for img in images:
                        if img["name"] == name:
                            c["image"] = f"{img.get('newName', name)}:{img['newTag']}" if "newTag" in img else img.get(
                                "newName", name
                            )
            _set_images(value, images)
    elif isinstance(node, list):
        for item in node:
            _set_images(item, images)


KNOWN_KEYS = {"apiVersion", "kind", "resources", "namespace", "labels", "images", "patches", "configMapGenerator",
              "generatorOptions"}


def render(directory: Path) -> list[dict[str, Any]]:
    """Render a kustomization directory like ``kubectl kustomize`` for the features used in deploy/."""
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kust) - KNOWN_KEYS
    assert not unknown, f"{directory}: kustomize features the test renderer does not implement: {unknown}"
    docs: list[dict[str, Any]] = []
    for res in kust.get("resources", []):
        path = (directory / res).resolve()
        docs.extend(render(path) if path.is_dir() else _load_docs(path))
    hashless = kust.get("generatorOptions", {}).get("disableNameSuffixHash", False)
    for gen in kust.get("configMapGenerator", []):
        assert hashless, "name suffix hashes need name-reference rewriting, which the renderer does not do"
        data = {Path(f).name: (directory / f).read_text() for f in gen.get("files", [])}
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data})
    for patch in kust.get("patches", []):
        pdoc = yaml.safe_load((directory / patch["path"]).read_text()) if "path" in patch else yaml.safe_load(
            patch["patch"]
        )
        matches = [i for i, d in enumerate(docs) if _ident(d) == _ident(pdoc)]
        assert len(matches) == 1, f"patch {patch} matches {len(matches)} resources"
        if pdoc.get("$patch") == "delete":
            del docs[matches[0]]
        else:
            docs[matches[0]] = _merge(docs[matches[0]], pdoc)
    if "images" in kust:
        for d in docs:
            _set_images(d, kust["images"])
    for entry in kust.get("labels", []):
        for d in docs:
            d["metadata"].setdefault("labels", {}).update(entry["pairs"])
    if "namespace" in kust:
        ns = kust["namespace"]
        for d in docs:
            if d["kind"] not in CLUSTER_SCOPED:
                d["metadata"]["namespace"] = ns
            if d["kind"] in ("RoleBinding", "ClusterRoleBinding"):
                for s in d.get("subjects", []):
                    if s.get("kind") == "ServiceAccount":
                        s["namespace"] = ns
    return docs


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
    """Every RayCluster spec, standalone or inside a RayJob / RayCronJob / the cron's RayJob template."""
    out = []
    for d in docs:
        if d["kind"] == "RayCluster":
            out.append((d["metadata"]["name"], d["spec"]))
        elif d["kind"] == "RayJob":
            out.append((d["metadata"]["name"], d["spec"]["rayClusterSpec"]))
        elif d["kind"] == "RayCronJob":
            out.append((d["metadata"]["name"], d["spec"]["jobTemplate"]["rayClusterSpec"]))
    return out


def embedded_rayjobs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """RayJob manifests shipped inside ConfigMaps (the template the CronJob submits)."""
    out = []
    for d in docs:
        if d["kind"] == "ConfigMap":
            for name, text in d.get("data", {}).items():
                if name.endswith(".yaml"):
                    inner = yaml.safe_load(text)
                    if isinstance(inner, dict) and inner.get("kind") == "RayJob":
                        out.append(inner)
    return out


# -- tests --------------------------------------------------------------------------------------------
def test_overlays_exist_and_render() -> None:
    assert set(OVERLAYS) == {"dev", "production", "raycronjob"}
    for overlay in OVERLAYS:
        kinds = sorted(d["kind"] for d in rendered(overlay))
        assert "RayCluster" in kinds and kinds.count("RayJob") == 2, (overlay, kinds)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_document_validates(overlay: str) -> None:
    docs = rendered(overlay)
    checked = 0
    for doc in docs + embedded_rayjobs(docs):
        if doc["apiVersion"].startswith("ray.io/"):
            assert validate_crd(doc) == [], f"{doc['kind']}/{doc['metadata']['name']}"
        else:
            validate_builtin(doc)
        checked += 1
    assert checked == len(docs) + 1  # every document plus the cron's RayJob template


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
    for name, spec in ray_clusters(docs + embedded_rayjobs(docs)):
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
    clusters = ray_clusters(docs + embedded_rayjobs(docs))
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
    jobs = [d for d in docs + embedded_rayjobs(docs) if d["kind"] == "RayJob"
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
    assert {("ray.io", "rayjobs", "create"), ("ray.io", "rayjobs", "get")} <= granted
    assert all(g == "ray.io" for g, _, _ in granted) and not any(v in ("delete", "*") for _, _, v in granted)
    # the pod runs the submit script on the template, both from the mounted ConfigMap
    submit = next(d for d in docs if d["metadata"]["name"] == "sgma-reprocess-submit")
    args = pod["containers"][0]["command"] + pod["containers"][0]["args"]
    assert Path(args[1]).name in submit["data"] and Path(args[args.index("--template") + 1]).name in submit["data"]
    compile(submit["data"]["submit_rayjob.py"], "submit_rayjob.py", "exec")


def test_raycronjob_overlay_replaces_the_cronjob() -> None:
    docs = rendered("raycronjob")
    assert not [d for d in docs if d["kind"] == "CronJob"]
    rcj = next(d for d in docs if d["kind"] == "RayCronJob")
    cron = next(d for d in rendered("production") if d["kind"] == "CronJob")
    assert rcj["spec"]["schedule"] == cron["spec"]["schedule"]
    template = next(j for j in embedded_rayjobs(docs))
    assert rcj["spec"]["jobTemplate"]["entrypoint"] == template["spec"]["entrypoint"]
    production = {c["image"] for _, s in ray_clusters(rendered("production")) for g in
                  (s["headGroupSpec"], *s["workerGroupSpecs"]) for c in g["template"]["spec"]["containers"]}
    ours = {c["image"] for g in (rcj["spec"]["jobTemplate"]["rayClusterSpec"]["headGroupSpec"],
                                 *rcj["spec"]["jobTemplate"]["rayClusterSpec"]["workerGroupSpecs"])
            for c in g["template"]["spec"]["containers"]}
    assert ours <= production


def test_renderer_applies_patches_and_namespace() -> None:
    """The renderer itself: a patch merges into the named worker group and leaves the rest alone."""
    base = {d["metadata"]["name"]: d for d in render(KUBERAY / "base") if d["kind"] == "RayCluster"}["sgma"]
    prod = {d["metadata"]["name"]: d for d in rendered("production") if d["kind"] == "RayCluster"}["sgma"]
    assert base["spec"]["workerGroupSpecs"][0]["maxReplicas"] == 4
    assert prod["spec"]["workerGroupSpecs"][0]["maxReplicas"] == 16
    assert prod["spec"]["workerGroupSpecs"][0]["template"] == _merge(
        base["spec"]["workerGroupSpecs"][0]["template"], {"spec": {"containers": [{"name": "ray-worker",
                                                                                    "image": prod["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["image"]}]}}
    )
    assert "namespace" not in base["metadata"] and prod["metadata"]["namespace"] == "sgma"
    json.dumps(prod)
