"""``dsr-deploy serve`` (a live Triton server through PyTriton) and ``dsr-deploy triton-repo`` (a model
repository for a production tritonserver).

Each command: parse (the flags) -> request (:func:`server_config`: every number checked before anything starts)
-> call (the serving package) -> render (:mod:`.render`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from ..errors import UserError
from ..serving.k8s import DEFAULT_IMAGE as K8S_IMAGE

ORDER = 60  # place in `dsr-deploy --help`: after export, verify, bench

Artifacts = Annotated[List[Path], typer.Argument(help="export folder(s) or model file(s); several are served side by "
                                                 "side, each under its own name")]
Backend = Annotated[Optional[str], typer.Option("--backend", help="runtime backend: onnxruntime | torchscript | "
                                                "torch | pt2 | tensorrt (default: the first that runs the artifact)")]
Host = Annotated[str, typer.Option("--host", help="address to bind HTTP and gRPC to (0.0.0.0 exposes the server to "
                                   "the network)")]
Port = Annotated[int, typer.Option("--port", help="HTTP port")]
GrpcPort = Annotated[Optional[int], typer.Option("--grpc-port", help="gRPC port (default: --port + 1)")]
MaxBatch = Annotated[int, typer.Option("--max-batch", help="largest dynamic batch (0: no batching)")]
QueueDelay = Annotated[int, typer.Option("--queue-delay-us", help="dynamic batcher's max queue delay")]
Names = Annotated[Optional[List[str]], typer.Option("--name", help="model name (once per artifact)")]
IdleTimeout = Annotated[float, typer.Option("--idle-timeout", help="streaming: drop a sequence's membranes after "
                                            "this many seconds without a request")]
MaxSequences = Annotated[int, typer.Option("--max-sequences", help="streaming: most open sequences")]
Threads = Annotated[int, typer.Option("--threads", help="compute threads per model runner (0: the backend's "
                                      "default; more than 1 competes with the server's own threads on small hosts)")]
MaxRequestMb = Annotated[float, typer.Option("--max-request-mb", help="largest HTTP request body and largest input "
                                             "bytes a request may declare (refused with HTTP 400/413 before the "
                                             "server allocates)")]
ServeJson = Annotated[bool, typer.Option("--json", help="print the endpoints and models as one JSON line when ready")]
TrustPickle = Annotated[bool, typer.Option("--trust-pickle", help="allow a .pt2 holding pickled Python objects (runs "
                                           "code from the file)")]
RepoArtifacts = Annotated[List[Path], typer.Argument(help="export folder(s), .onnx file(s), and optionally one "
                                                     "TensorRT plan (.plan/.engine) built from the single ONNX model")]
RepoOut = Annotated[Path, typer.Option("--out", help="the model repository folder to write")]
RepoMaxBatch = Annotated[int, typer.Option("--max-batch", help="max_batch_size (0: no batching)")]
RepoName = Annotated[Optional[str], typer.Option("--name", help="model name (single model only)")]
OrtOpsLibrary = Annotated[Optional[str], typer.Option("--ort-ops-library", help="path, as the server sees it, of "
                                                      "libdsr_ort_ops.so (fused dsr kernels for onnxruntime)")]
InstanceKind = Annotated[str, typer.Option("--instance-kind", help="where the onnxruntime models run: cpu (KIND_CPU) "
                                           "| gpu (KIND_GPU: the CUDA execution provider, and the fused CUDA kernels "
                                           "with --ort-ops-library)")]
Force = Annotated[bool, typer.Option("--force", help="replace an existing repository folder")]
RepoJson = Annotated[bool, typer.Option("--json", help="print a JSON summary")]
K8s = Annotated[Optional[Path], typer.Option("--k8s", help="also write Kubernetes manifests for the repository into "
                                             "this folder (Deployment, Service, KServe InferenceService, and for "
                                             "streaming models the sequence-affinity routing rule)")]
K8sName = Annotated[str, typer.Option("--k8s-name", help="name of the Kubernetes objects")]
K8sImage = Annotated[str, typer.Option("--k8s-image", help="the tritonserver image")]
K8sReplicas = Annotated[int, typer.Option("--k8s-replicas", help="replicas of the Deployment")]
K8sNamespace = Annotated[str, typer.Option("--k8s-namespace", help="namespace the routing rule's service names point "
                                           "into")]
RepoBackend = Annotated[str, typer.Option("--backend", help="what runs the ONNX models: onnxruntime (Triton's "
                                          "onnxruntime backend) | python (ONNX Runtime in a python-backend model.py; "
                                          "the same config fields; the tritonserver PyTriton ships runs it)")]


def server_config(host: str, port: int, grpc_port: Optional[int], max_batch: int, queue_delay_us: int,
                  threads: int, idle_timeout: float, max_request_mb: float):
    """The server's configuration from the flags; one-line errors for values it cannot start with."""
    from ..serving.pytriton_server import ServerConfig

    for label, value in (("--port", port), ("--grpc-port", grpc_port)):
        if value is not None and not 0 < value < 65536:
            raise UserError(f"{label} must be in 1..65535, got {value}")
    if max_batch < 0:
        raise UserError(f"--max-batch must be >= 0, got {max_batch}")
    if threads < 0:
        raise UserError(f"--threads must be >= 0, got {threads}")
    if idle_timeout <= 0:
        raise UserError(f"--idle-timeout must be > 0, got {idle_timeout}")
    if not max_request_mb > 0:
        raise UserError(f"--max-request-mb must be > 0, got {max_request_mb}")
    if grpc_port is None and port == 65535:
        raise UserError("--port 65535 leaves no room for the default --grpc-port (--port + 1); pass --grpc-port")
    cfg = ServerConfig(host=host, http_port=port, grpc_port=grpc_port if grpc_port else port + 1,
                       max_batch=max_batch, queue_delay_us=queue_delay_us, max_request_mb=max_request_mb)
    if cfg.grpc_port == cfg.http_port:
        raise UserError(f"--port and --grpc-port are both {port}; give two different ports")
    return cfg


def serve(artifacts: Artifacts, backend: Backend = None, host: Host = "127.0.0.1", port: Port = 8000,
          grpc_port: GrpcPort = None, max_batch: MaxBatch = 8, queue_delay_us: QueueDelay = 100, name: Names = None,
          idle_timeout: IdleTimeout = 60.0, max_sequences: MaxSequences = 4096, threads: Threads = 1,
          max_request_mb: MaxRequestMb = 64.0, as_json: ServeJson = False, trust_pickle: TrustPickle = False):
    """Serve exported models through a real Triton server (PyTriton), dynamic batching, until SIGINT/SIGTERM."""
    from ..serving.pytriton_server import serve as run_server
    from .render import serving_ready

    cfg = server_config(host, port, grpc_port, max_batch, queue_delay_us, threads, idle_timeout, max_request_mb)
    code = run_server([str(a) for a in artifacts], backend, cfg, names=name or None, idle_timeout_s=idle_timeout,
                      max_sequences=max_sequences, threads=threads, ready=lambda info: serving_ready(info, as_json),
                      trust_pickle=trust_pickle)
    if code:
        raise typer.Exit(code)


def triton_repo(artifacts: RepoArtifacts, out: RepoOut, max_batch: RepoMaxBatch = 8, name: RepoName = None,
                ort_ops_library: OrtOpsLibrary = None, instance_kind: InstanceKind = "cpu", force: Force = False,
                as_json: RepoJson = False, backend: RepoBackend = "onnxruntime", k8s: K8s = None,
                k8s_name: K8sName = "dsr-triton", k8s_image: K8sImage = K8S_IMAGE, k8s_replicas: K8sReplicas = 2,
                k8s_namespace: K8sNamespace = "default"):
    """Write a Triton model repository (config.pbtxt per model, README on the dsr plugin library)."""
    from ..serving.triton_repo import write_repository
    from .render import repository_summary

    if k8s is not None:  # every option checked before the repository is written
        from ..io import check_output_target
        from ..serving.k8s import check_options

        check_options(k8s_name, k8s_replicas, k8s_namespace)
        if Path(k8s).resolve() == Path(out).resolve():
            raise UserError("--k8s and --out must be two different folders")
        check_output_target(k8s, force=force, protect=(out, *artifacts))
    summary = write_repository(artifacts, out, max_batch=max_batch, name=name, force=force,
                               ort_ops_library=ort_ops_library, instance_kind=instance_kind, backend=backend)
    if k8s is not None:
        from ..serving.k8s import write_manifests

        summary["k8s"] = write_manifests(k8s, summary, name=k8s_name, image=k8s_image, replicas=k8s_replicas,
                                         namespace=k8s_namespace, force=force)
    repository_summary(summary, out, as_json, k8s)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("triton-repo")(triton_repo)
