"""``dsr-deploy triton-repo ... --k8s DIR``: Kubernetes manifests for a Triton model repository.

``DIR`` gets ``deployment.yaml`` (tritonserver with the repository and the dsr libraries mounted, probes on
Triton's ``/v2/health/ready`` and ``/v2/health/live``, resource requests, a GPU when the models need one) and
``service.yaml`` (a Service, and for streaming models a headless one that lists the pods for a balancer),
``kserve/inferenceservice.yaml`` (the KServe variant), for streaming models ``routing/nginx.conf`` and
``routing/envoy.yaml`` (consistent hashing on the ``X-DSR-Sequence-Id`` header, so every step of a sequence
reaches the replica that holds its membranes), and a README.

The YAML files are JSON documents, which YAML reads as they are (a JSON text is a YAML document): no YAML library is
needed to write them, and ``kubectl apply -f DIR`` takes them (it reads ``*.yaml`` in DIR, not its subfolders).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .. import contract
from ..errors import UserError
from .balancer import nginx_affinity_map, nginx_proxy_location, nginx_upstream

DEFAULT_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"  # Triton 2.51, the server PyTriton 0.7 bundles
HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002
KSERVE_HTTP_PORT = 8080  # KServe's Triton runtime serves HTTP here
MODELS_DIR, LIB_DIR = "/models", "/dsr_lib"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def check_options(name: str, replicas: int, namespace: str) -> None:
    """Refuse what Kubernetes would refuse, before anything is written."""
    for what, value, limit in (("--k8s-name", name, 50), ("--k8s-namespace", namespace, 63)):
        if not _DNS_LABEL.match(value) or len(value) > limit:
            raise UserError(f"{what} must be a DNS label (lower-case letters, digits and '-', at most {limit} "
                            f"characters), got {value!r}")
    if replicas < 1:
        raise UserError(f"--k8s-replicas must be >= 1, got {replicas}")


def dump(obj) -> str:
    """A manifest as YAML: a JSON document (YAML 1.2 reads JSON as it is; so do kubectl and PyYAML)."""
    return json.dumps(obj, indent=2, ensure_ascii=True) + "\n"


def _labels(name: str) -> dict:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "dsr-deploy"}


def _server_args(has_plan: bool, standalone: bool = True) -> list:
    """tritonserver's arguments (``standalone=False``: KServe's runtime sets the repository and ports itself)."""
    args = [f"--model-repository={MODELS_DIR}", "--strict-readiness=true"] if standalone else []
    if has_plan:  # TensorRT plans with dsr layers: the plugin library, loaded by the tensorrt backend
        args.append(f"--backend-config=tensorrt,plugins={LIB_DIR}/{contract.TRT_PLUGIN_LIBRARY}")
    return args


def _resources(gpu: bool) -> dict:
    res = {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "8Gi"}}
    if gpu:
        res["requests"]["nvidia.com/gpu"] = 1
        res["limits"]["nvidia.com/gpu"] = 1
    return res


def _probes(port) -> dict:
    return {"readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": port}, "periodSeconds": 5,
                               "failureThreshold": 3},
            "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": port}, "periodSeconds": 10,
                              "failureThreshold": 3},
            # Loading models (a TensorRT plan, the ONNX Runtime session) can take minutes: liveness waits for it.
            "startupProbe": {"httpGet": {"path": "/v2/health/live", "port": port}, "periodSeconds": 10,
                             "failureThreshold": 30}}


def _volumes(name: str) -> tuple:
    mounts = [{"name": "model-repository", "mountPath": MODELS_DIR, "readOnly": True},
              {"name": "dsr-lib", "mountPath": LIB_DIR, "readOnly": True}]
    volumes = [{"name": "model-repository", "persistentVolumeClaim": {"claimName": f"{name}-models"}},
               {"name": "dsr-lib", "persistentVolumeClaim": {"claimName": f"{name}-dsr-lib"}}]
    return mounts, volumes


def deployment(name: str, image: str, replicas: int, gpu: bool, has_plan: bool) -> dict:
    mounts, volumes = _volumes(name)
    container = {"name": "tritonserver", "image": image, "command": ["tritonserver"], "args": _server_args(has_plan),
                 "ports": [{"name": "http", "containerPort": HTTP_PORT}, {"name": "grpc", "containerPort": GRPC_PORT},
                           {"name": "metrics", "containerPort": METRICS_PORT}],
                 **_probes("http"), "resources": _resources(gpu), "volumeMounts": mounts}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": _labels(name)},
            "spec": {"replicas": replicas, "selector": {"matchLabels": _labels(name)},
                     # Streams live in a pod: never take one down before its replacement is ready.
                     "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                     "template": {"metadata": {"labels": _labels(name)},
                                  "spec": {"containers": [container], "volumes": volumes}}}}


def services(name: str, streaming: bool) -> list:
    ports = [{"name": n, "port": p, "targetPort": n} for n, p in
             (("http", HTTP_PORT), ("grpc", GRPC_PORT), ("metrics", METRICS_PORT))]
    out = [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": _labels(name)},
            "spec": {"type": "ClusterIP", "selector": _labels(name), "ports": ports}}]
    if streaming:  # headless: its DNS name lists every ready pod, for the balancer's consistent hashing
        out.append({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": f"{name}-pods", "labels": _labels(name)},
                    "spec": {"clusterIP": "None", "selector": _labels(name), "ports": ports}})
    return out


def inference_service(name: str, replicas: int, gpu: bool, has_plan: bool, streaming: bool, image: str) -> dict:
    mounts, volumes = _volumes(name)
    version = image.rsplit(":", 1)[-1] if ":" in image else "24.10-py3"
    model = {"modelFormat": {"name": "triton"}, "runtimeVersion": version,
             "storageUri": f"pvc://{name}-models/", "args": _server_args(has_plan, standalone=False),
             **_probes(KSERVE_HTTP_PORT), "resources": _resources(gpu), "volumeMounts": mounts[1:]}
    predictor = {"minReplicas": replicas, "maxReplicas": replicas, "model": model, "volumes": volumes[1:]}
    annotations = {"serving.kserve.io/deploymentMode": "RawDeployment"}
    if not streaming:  # stateless models may scale with load
        predictor["maxReplicas"] = max(replicas, 4)
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": name, "labels": _labels(name), "annotations": annotations},
            "spec": {"predictor": predictor}}


def nginx_snippet(name: str, namespace: str) -> str:
    pods = f"{name}-pods.{namespace}.svc.cluster.local:{HTTP_PORT}"
    return (f"# dsr-deploy: route every step of a streaming sequence to one replica (nginx http {{}} context).\n"
            f"# The replicas: the headless Service {name}-pods, re-resolved as pods come and go (nginx >= 1.27.3;\n"
            "# older nginx: one `server POD_IP:8000;` line per replica instead of the `resolve` line).\n"
            "resolver kube-dns.kube-system.svc.cluster.local valid=10s;\n\n"
            + nginx_affinity_map() + "\n"
            + nginx_upstream("dsr_triton", [f"{pods} resolve"], affinity=True).replace(
                "upstream dsr_triton {\n", "upstream dsr_triton {\n    zone dsr_triton 64k;\n")
            + "\nserver {\n    listen 8080;\n" + "".join("    " + line + "\n" for line in
                                                     nginx_proxy_location("dsr_triton").splitlines()) + "}\n")


def envoy_config(name: str, namespace: str) -> dict:
    """Envoy (static config): ring hash on the sequence header over the headless Service's pods."""
    header = contract.SEQUENCE_ID_HEADER.lower()
    hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                    "HttpConnectionManager",
           "stat_prefix": "dsr",
           "route_config": {"virtual_hosts": [{"name": "dsr", "domains": ["*"], "routes": [
               {"match": {"prefix": "/"}, "route": {"cluster": "dsr_triton", "timeout": "60s",
                                                     "hash_policy": [{"header": {"header_name": header}}]}}]}]},
           "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
               "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}
    endpoint = {"endpoint": {"address": {"socket_address": {
        "address": f"{name}-pods.{namespace}.svc.cluster.local", "port_value": HTTP_PORT}}}}
    return {"static_resources": {
        "listeners": [{"name": "dsr", "address": {"socket_address": {"address": "0.0.0.0", "port_value": 8080}},
                       "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                       "typed_config": hcm}]}]}],
        "clusters": [{"name": "dsr_triton", "type": "STRICT_DNS", "lb_policy": "RING_HASH", "connect_timeout": "5s",
                      "dns_refresh_rate": "10s",
                      "load_assignment": {"cluster_name": "dsr_triton", "endpoints": [{"lb_endpoints": [endpoint]}]}}]}}


def write_manifests(out: Path | str, summary: dict, name: str = "dsr-triton", image: str = DEFAULT_IMAGE,
                    replicas: int = 2, namespace: str = "default", force: bool = False) -> dict:
    """Write the manifests for the repository ``summary`` (from ``write_repository``) into ``out``, all or
    nothing. Returns what was written."""
    from ..io import atomic_dir

    check_options(name, replicas, namespace)
    models = summary["models"]
    streaming = any(m["streaming"] for m in models)
    has_plan = any(m["backend"] == "tensorrt_plan" for m in models)
    gpu = has_plan or any(m.get("instance_kind") == "KIND_GPU" for m in models)
    files = {"deployment.yaml": dump(deployment(name, image, replicas, gpu, has_plan)),
             "service.yaml": "---\n".join(dump(s) for s in services(name, streaming)),
             "kserve/inferenceservice.yaml": dump(inference_service(name, replicas, gpu, has_plan, streaming,
                                                                      image))}
    if streaming:
        files["routing/nginx.conf"] = nginx_snippet(name, namespace)
        files["routing/envoy.yaml"] = dump(envoy_config(name, namespace))
    files["README.md"] = _readme(name, namespace, streaming, gpu, has_plan, [m["name"] for m in models])
    with atomic_dir(Path(out), force=force) as tmp:
        for rel, text in files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text(text)
    return {"k8s": str(out), "files": sorted(files), "streaming": streaming, "gpu": gpu}


def _readme(name: str, namespace: str, streaming: bool, gpu: bool, has_plan: bool, models: list) -> str:
    lines = [f"# Kubernetes manifests for the Triton repository ({', '.join(models)})", "",
             "Written by `dsr-deploy triton-repo ... --k8s`. Before applying, put the repository and the dsr "
             f"libraries where the pods find them: the PersistentVolumeClaim `{name}-models` holds the repository "
             f"(mounted at `{MODELS_DIR}`), `{name}-dsr-lib` the libraries of `dsr-deploy plugins build --lib-dir` "
             f"(mounted at `{LIB_DIR}`; build them in the serving image, see the repository's README).", "",
             f"    kubectl -n {namespace} apply -f .            # deployment.yaml, service.yaml",
             f"    kubectl -n {namespace} apply -f kserve/      # or: the KServe InferenceService instead", "",
             f"Resources: 2 CPUs and 4 GiB requested per replica{', one GPU' if gpu else ''} (edit to fit).",
             "Probes: readiness on `/v2/health/ready`, liveness on `/v2/health/live` (after a startup probe)."]
    if has_plan:
        lines.append(f"TensorRT plans: `--backend-config=tensorrt,plugins={LIB_DIR}/{contract.TRT_PLUGIN_LIBRARY}`.")
    if streaming:
        lines += ["", "## Streaming models: keep each sequence on its replica", "",
                  "Triton's sequence batcher keeps a sequence's membranes inside one server: a balancer that spreads "
                  "a sequence's steps over replicas breaks it (the other replica does not know the sequence). "
                  f"dsr-deploy's stream clients send the id in the `{contract.SEQUENCE_ID_HEADER}` header; route on "
                  "it with consistent hashing, over the headless Service "
                  f"`{name}-pods` (it lists every ready pod): `routing/nginx.conf` (nginx `hash ... consistent`) "
                  "or `routing/envoy.yaml` (Envoy `RING_HASH` with a header `hash_policy`). The ClusterIP Service "
                  f"`{name}` spreads requests at random: fine for multi-step models, not for streams.",
                  "A replica that goes away (scale-down, rollout, crash) takes its open sequences with it; their "
                  "next step is answered \"unknown sequence id\" by another replica, and the client starts the "
                  "stream again. Consistent hashing moves only that replica's sequences. The KServe variant keeps "
                  "the replica count fixed (min = max) for the same reason; put the routing rule in front of it."]
    return "\n".join(lines) + "\n"
