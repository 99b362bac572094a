"""`triton-repo ... --k8s DIR`: the Kubernetes manifests parse as YAML (PyYAML reads them back) and carry what a
cluster needs; no cluster is needed here."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from _streaming_nets import export_multistep_onnx, mlp_net

from dsr_deploy import contract
from dsr_deploy.cli import main
from dsr_deploy.export import export_model

T, B = 5, 3


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("k8s_src")
    net = mlp_net()
    x = torch.randn(T, B, 6) * 2
    multi = root / "mlp"
    multi.mkdir()
    export_multistep_onnx(net, x, multi / "model.onnx")
    stream = root / "mlp_stream"
    export_model(net, tuple(x.shape), stream, mode="streaming", formats=("onnx",))
    return multi, stream


def _docs(path):
    """Every document of a YAML file, read by PyYAML's safe loader (and, as written, by json too)."""
    text = path.read_text()
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    assert docs == [json.loads(part) for part in text.split("---\n")]
    return docs


def _container(deployment):
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


def test_streaming_repository_manifests(exports, tmp_path):
    multi, stream = exports
    k8s = tmp_path / "k8s"
    main(["triton-repo", str(multi / "model.onnx"), str(stream), "--out", str(tmp_path / "repo"), "--k8s", str(k8s),
          "--k8s-replicas", "3", "--k8s-name", "snn"])
    (dep,) = _docs(k8s / "deployment.yaml")
    assert dep["apiVersion"] == "apps/v1" and dep["kind"] == "Deployment" and dep["metadata"]["name"] == "snn"
    assert dep["spec"]["replicas"] == 3
    assert dep["spec"]["selector"]["matchLabels"] == dep["spec"]["template"]["metadata"]["labels"]
    c = _container(dep)
    assert c["image"].startswith("nvcr.io/nvidia/tritonserver:") and c["command"] == ["tritonserver"]
    assert "--model-repository=/models" in c["args"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
    assert not any("nvidia.com/gpu" in v for v in c["resources"].values())  # --instance-kind cpu, no plan
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert set(mounts) == {"/models", "/dsr_lib"} and all(m["readOnly"] for m in c["volumeMounts"])
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert claims == {"model-repository": "snn-models", "dsr-lib": "snn-dsr-lib"}
    # A ClusterIP Service, and the headless one the balancer resolves to the pods.
    svc, pods = _docs(k8s / "service.yaml")
    assert svc["kind"] == pods["kind"] == "Service"
    assert svc["spec"]["selector"] == pods["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert {p["port"] for p in svc["spec"]["ports"]} == {8000, 8001, 8002}
    assert pods["metadata"]["name"] == "snn-pods" and pods["spec"]["clusterIP"] == "None"
    # KServe: the Triton runtime on the same repository; a fixed replica count (streams live in a replica).
    (isvc,) = _docs(k8s / "kserve" / "inferenceservice.yaml")
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["kind"] == "InferenceService"
    pred = isvc["spec"]["predictor"]
    assert pred["model"]["modelFormat"] == {"name": "triton"} and pred["model"]["storageUri"] == "pvc://snn-models/"
    assert pred["minReplicas"] == pred["maxReplicas"] == 3
    assert pred["model"]["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    # The routing rule: consistent hashing on the sequence header.
    nginx = (k8s / "routing" / "nginx.conf").read_text()
    assert contract.nginx_header_variable() == "$http_x_dsr_sequence_id"
    assert "map $http_x_dsr_sequence_id $dsr_affinity_key" in nginx and "hash $dsr_affinity_key consistent;" in nginx
    assert "snn-pods.default.svc.cluster.local:8000" in nginx and "proxy_pass http://dsr_triton;" in nginx
    (envoy,) = _docs(k8s / "routing" / "envoy.yaml")
    (cluster,) = envoy["static_resources"]["clusters"]
    assert cluster["lb_policy"] == "RING_HASH" and cluster["type"] == "STRICT_DNS"
    hcm = envoy["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    (route,) = hcm["route_config"]["virtual_hosts"][0]["routes"]
    assert route["route"]["cluster"] == cluster["name"]
    assert route["route"]["hash_policy"] == [{"header": {"header_name": "x-dsr-sequence-id"}}]
    readme = (k8s / "README.md").read_text()
    assert "X-DSR-Sequence-Id" in readme and "kubectl" in readme


def test_gpu_and_plan_manifests(exports, tmp_path):
    multi, _ = exports
    (multi / "model.plan").write_bytes(b"not a real engine: the repository writer only copies it")
    try:
        main(["triton-repo", str(multi / "model.onnx"), str(multi / "model.plan"), "--out", str(tmp_path / "repo"),
              "--k8s", str(tmp_path / "k8s")])
    finally:
        (multi / "model.plan").unlink()
    c = _container(_docs(tmp_path / "k8s" / "deployment.yaml")[0])
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert f"--backend-config=tensorrt,plugins=/dsr_lib/{contract.TRT_PLUGIN_LIBRARY}" in c["args"]
    assert not (tmp_path / "k8s" / "routing").exists()  # no streaming model: no routing rule needed
    isvc = _docs(tmp_path / "k8s" / "kserve" / "inferenceservice.yaml")[0]
    assert isvc["spec"]["predictor"]["model"]["resources"]["limits"]["nvidia.com/gpu"] == 1
    main(["triton-repo", str(multi / "model.onnx"), "--out", str(tmp_path / "repo2"), "--k8s", str(tmp_path / "k2"),
          "--instance-kind", "gpu"])
    assert _container(_docs(tmp_path / "k2" / "deployment.yaml")[0])["resources"]["limits"]["nvidia.com/gpu"] == 1


@pytest.mark.parametrize("extra, words", [
    (["--k8s-name", "Not_A_Label"], "--k8s-name must be a DNS label"),
    (["--k8s-replicas", "0"], "--k8s-replicas must be >= 1"),
    (["--k8s-namespace", "-x"], "--k8s-namespace must be a DNS label"),
])
def test_bad_options_write_nothing(exports, tmp_path, capsys, extra, words):
    multi, _ = exports
    with pytest.raises(SystemExit) as exc:
        main(["triton-repo", str(multi / "model.onnx"), "--out", str(tmp_path / "repo"), "--k8s", str(tmp_path / "k"),
              *extra])
    assert exc.value.code == 2 and words in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_existing_k8s_folder_is_refused_before_the_repository_is_written(exports, tmp_path, capsys):
    multi, _ = exports
    (tmp_path / "k").mkdir()
    with pytest.raises(SystemExit) as exc:
        main(["triton-repo", str(multi / "model.onnx"), "--out", str(tmp_path / "repo"), "--k8s", str(tmp_path / "k")])
    assert exc.value.code == 2 and "exists" in capsys.readouterr().err
    assert not (tmp_path / "repo").exists()
