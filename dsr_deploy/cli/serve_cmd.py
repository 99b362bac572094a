"""``dsr-deploy serve`` (a live Triton server through PyTriton) and ``dsr-deploy triton-repo`` (a model
repository for a production tritonserver)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import UserError
from ..serving.k8s import DEFAULT_IMAGE as K8S_IMAGE
from .validate import emit_json

ORDER = 60  # place in `dsr-deploy --help`: after export, verify, bench


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        artifacts: List[Path] = typer.Argument(..., help="export folder(s) or model file(s); several are served "
                                               "side by side, each under its own name"),
        backend: Optional[str] = typer.Option(None, "--backend", help="runtime backend: onnxruntime | torchscript | "
                                              "torch | pt2 | tensorrt (default: the first that runs the artifact)"),
        host: str = typer.Option("127.0.0.1", "--host", help="address to bind HTTP and gRPC to (0.0.0.0 exposes "
                                 "the server to the network)"),
        port: int = typer.Option(8000, "--port", help="HTTP port"),
        grpc_port: Optional[int] = typer.Option(None, "--grpc-port", help="gRPC port (default: --port + 1)"),
        max_batch: int = typer.Option(8, "--max-batch", help="largest dynamic batch (0: no batching)"),
        queue_delay_us: int = typer.Option(100, "--queue-delay-us", help="dynamic batcher's max queue delay"),
        name: Optional[List[str]] = typer.Option(None, "--name", help="model name (once per artifact)"),
        idle_timeout: float = typer.Option(60.0, "--idle-timeout", help="streaming: drop a sequence's membranes "
                                           "after this many seconds without a request"),
        max_sequences: int = typer.Option(4096, "--max-sequences", help="streaming: most open sequences"),
        threads: int = typer.Option(1, "--threads", help="compute threads per model runner (0: the backend's "
                                    "default; more than 1 competes with the server's own threads on small hosts)"),
        max_request_mb: float = typer.Option(64.0, "--max-request-mb", help="largest HTTP request body and "
                                             "largest input bytes a request may declare (refused with HTTP 400/413 "
                                             "before the server allocates)"),
        as_json: bool = typer.Option(False, "--json", help="print the endpoints and models as one JSON line when "
                                     "ready"),
        trust_pickle: bool = typer.Option(False, "--trust-pickle", help="allow a .pt2 holding pickled Python "
                                          "objects (runs code from the file)"),
    ):
        """Serve exported models through a real Triton server (PyTriton), dynamic batching, until SIGINT/SIGTERM."""
        from ..serving.pytriton_server import ServerConfig
        from ..serving.pytriton_server import serve as run_server

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

        def ready(info):
            if as_json:
                emit_json(json.dumps(info))
            else:
                typer.echo(f"serving {', '.join(m['name'] for m in info['models'])} at {info['http']} "
                           f"(gRPC {info['grpc']}); Ctrl-C or SIGTERM stops")
            import sys

            sys.stdout.flush()

        code = run_server([str(a) for a in artifacts], backend, cfg, names=name or None,
                          idle_timeout_s=idle_timeout, max_sequences=max_sequences, threads=threads, ready=ready,
                          trust_pickle=trust_pickle)
        if code:
            raise typer.Exit(code)

    @app.command("triton-repo")
    def triton_repo(
        artifacts: List[Path] = typer.Argument(..., help="export folder(s), .onnx file(s), and optionally one "
                                               "TensorRT plan (.plan/.engine) built from the single ONNX model"),
        out: Path = typer.Option(..., "--out", help="the model repository folder to write"),
        max_batch: int = typer.Option(8, "--max-batch", help="max_batch_size (0: no batching)"),
        name: Optional[str] = typer.Option(None, "--name", help="model name (single model only)"),
        ort_ops_library: Optional[str] = typer.Option(None, "--ort-ops-library", help="path, as the server sees "
                                                      "it, of libdsr_ort_ops.so (fused dsr kernels for onnxruntime)"),
        instance_kind: str = typer.Option("cpu", "--instance-kind", help="where the onnxruntime models run: cpu "
                                          "(KIND_CPU) | gpu (KIND_GPU: the CUDA execution provider, and the fused "
                                          "CUDA kernels with --ort-ops-library)"),
        backend: str = typer.Option("onnxruntime", "--backend", help="what runs the ONNX models: onnxruntime "
                                    "(Triton's onnxruntime backend) | python (ONNX Runtime in a python-backend "
                                    "model.py; the same config fields; the tritonserver PyTriton ships runs it)"),
        force: bool = typer.Option(False, "--force", help="replace an existing repository folder"),
        as_json: bool = typer.Option(False, "--json", help="print a JSON summary"),
        k8s: Optional[Path] = typer.Option(None, "--k8s", help="also write Kubernetes manifests for the repository "
                                           "into this folder (Deployment, Service, KServe InferenceService, and "
                                           "for streaming models the sequence-affinity routing rule)"),
        k8s_name: str = typer.Option("dsr-triton", "--k8s-name", help="name of the Kubernetes objects"),
        k8s_image: str = typer.Option(K8S_IMAGE, "--k8s-image",
                                      help="the tritonserver image"),
        k8s_replicas: int = typer.Option(2, "--k8s-replicas", help="replicas of the Deployment"),
        k8s_namespace: str = typer.Option("default", "--k8s-namespace", help="namespace the routing rule's "
                                          "service names point into"),
    ):
        """Write a Triton model repository (config.pbtxt per model, README on the dsr plugin library)."""
        from ..serving.triton_repo import write_repository

        if k8s is not None:  # every option checked before the repository is written
            from ..io import check_output_target
            from ..serving.k8s import check_options

            check_options(k8s_name, k8s_replicas, k8s_namespace)
            if Path(k8s).resolve() == Path(out).resolve():
                raise UserError("--k8s and --out must be two different folders")
            check_output_target(k8s, force=force, protect=(out, *artifacts))
        summary = write_repository(artifacts, out, max_batch=max_batch, name=name, force=force,
                                   ort_ops_library=ort_ops_library, instance_kind=instance_kind,
                                   backend=backend)
        if k8s is not None:
            from ..serving.k8s import write_manifests

            summary["k8s"] = write_manifests(k8s, summary, name=k8s_name, image=k8s_image, replicas=k8s_replicas,
                                             namespace=k8s_namespace, force=force)
        if as_json:
            emit_json(json.dumps(summary, indent=2))
            return
        typer.echo(f"wrote {out}:")
        for m in summary["models"]:
            typer.echo(f"  {m['name']:<32} {m['backend']:<14} max_batch_size {m['max_batch_size']}"
                       + (f"  ({m['note']})" if m["note"] else ""))
        typer.echo(f"  see {Path(out) / 'README.md'} to start tritonserver")
        if k8s is not None:
            typer.echo(f"wrote {k8s}: {', '.join(summary['k8s']['files'])} (see {Path(k8s) / 'README.md'})")
