"""Serving benchmark: `dsr-deploy serve` (a real Triton server via PyTriton) on this machine.

Measured side by side in one run, on the same exported model and inputs:

* local: the same runtime runner called in-process (no server) -- the peer;
* memcpy: copying the request's and response's bytes (the floor of any transport);
* server, batch 1: one client, one request at a time (latency-bound);
* server, dynamic batching: 8 concurrent clients (Triton batches their requests);
* server, streaming: 8 concurrent streams, one time step per request (server-side membranes);
* memory: resident memory of the server process tree after 100 requests and after 10,000.

Usage: python benchmarks/bench_serving.py [--requests N] [--out benchmarks/results/serving]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the small DSR nets the tests use

from _streaming_nets import conv_net, mlp_net  # noqa: E402

from dsr_deploy.export import export_model  # noqa: E402
from dsr_deploy.runtime import load_runner  # noqa: E402
from dsr_deploy.serving.client import ServeClient, StreamClient  # noqa: E402
from dsr_deploy.serving.process import ServerProcess  # noqa: E402

T = 6
SHAPE = (T, 1, 2, 8, 8)


def pct(values, q):
    return float(np.percentile(np.asarray(values) * 1e3, q))


def summary(latencies, wall):
    return {"requests": len(latencies), "req_per_s": len(latencies) / wall, "p50_ms": pct(latencies, 50),
            "p99_ms": pct(latencies, 99), "mean_ms": 1e3 * statistics.fmean(latencies)}


def timed_loop(fn, n):
    lat = []
    t0 = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        lat.append(time.perf_counter() - t)
    return summary(lat, time.perf_counter() - t0)


def concurrent(url, clients, per_client, make_call):
    lats, errors = [[] for _ in range(clients)], []
    barrier = threading.Barrier(clients + 1)

    def worker(k):
        try:
            with ServeClient(url) as c:
                call = make_call(c, k)
                barrier.wait()
                for i in range(per_client):
                    t = time.perf_counter()
                    call(i)
                    lats[k].append(time.perf_counter() - t)
        except Exception as exc:
            errors.append(repr(exc))
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(errors[0])
    out = summary([x for lst in lats for x in lst], wall)
    out["clients"] = clients
    return out


def machine():
    from importlib import metadata

    import onnxruntime

    from dsr_deploy.machine import cpu_flags, cpu_model

    return {"cpu": cpu_model(), "cpu_vector_flags": " ".join(cpu_flags()), "cores": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
            "nvidia-pytriton": metadata.version("nvidia-pytriton"), "tritonclient": metadata.version("tritonclient")}


def served_models(tmp: Path, rng):
    """The two served folders (multi-step conv, streaming MLP, ONNX) and the inputs the clients send."""
    multi, stream = tmp / "conv", tmp / "mlp_stream"
    export_model(conv_net(), SHAPE, multi, formats=("onnx",))
    export_model(mlp_net(), (T, 1, 6), stream, mode="streaming", formats=("onnx",))
    pool = [(rng.standard_normal(SHAPE) * 2).astype(np.float32) for _ in range(32)]
    steps = (rng.standard_normal((64, 1, 6)) * 2).astype(np.float32)
    return multi, stream, pool, steps


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1000, help="requests per timed phase (batch 1)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--memory-requests", type=int, default=10_000)
    ap.add_argument("--out", default=str(HERE / "results" / "serving"))
    args = ap.parse_args(argv)

    load_before = os.getloadavg()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="bench_serving_") as tmp:
        tmp = Path(tmp)
        multi, stream, pool, steps = served_models(tmp, rng)
        results = {"machine": machine(), "model": {"multistep": "conv-BN-IF -> linear-LIF, input [1, 6, 2, 8, 8], "
                                                    "ONNX (dsr nodes, function fallback), onnxruntime CPU, 1 thread",
                                                    "streaming": "linear-LIF -> linear-IF, x_t [1, 6], ONNX"}}

        # Peers: the runner in-process, and a memcpy of the bytes a request moves.
        with load_runner(multi, "onnxruntime", threads=1) as local:  # as the server runs it (--threads 1)
            for x in pool[:8]:
                local.infer({"input": x})
            results["local_runner"] = timed_loop(lambda i: local.infer({"input": pool[i % 32]}), args.requests)
        src = np.concatenate([p.ravel() for p in pool])
        dst = np.empty_like(src)
        nbytes = pool[0].nbytes + 4 * T * 5
        n_el = nbytes // 4

        def memcpy(i):
            off = (i * n_el) % (src.size - n_el)
            np.copyto(dst[off:off + n_el], src[off:off + n_el])

        results["memcpy_request_bytes"] = timed_loop(memcpy, args.requests)
        results["memcpy_request_bytes"]["bytes"] = int(nbytes)

        server = ServerProcess(tmp / "srv", [multi, stream], ["--max-batch", "16"])
        try:
            with ServeClient(server.url) as c:
                for x in pool[:20]:
                    c.infer("conv", {"input": np.swapaxes(x, 0, 1)})
                results["server_batch1"] = timed_loop(
                    lambda i: c.infer("conv", {"input": np.swapaxes(pool[i % 32], 0, 1)}, ["output"]), args.requests)
            results["server_dynamic_batching"] = concurrent(
                server.url, args.clients, args.requests // args.clients * 2,
                lambda c, k: (lambda i: c.infer("conv", {"input": np.swapaxes(pool[(k + i) % 32], 0, 1)}, ["output"])))

            def stream_call(c, k):
                s = StreamClient(c, "mlp_stream")
                return lambda i: s.step(steps[(k + i) % 64], end=(i % 50) == 49)

            results["server_streaming"] = concurrent(server.url, args.clients, args.requests // args.clients * 2,
                                                     stream_call)
            # Memory: after 100 requests of a fresh phase vs after 10,000 (mixed multi-step and streaming).
            mem = {}
            with ServeClient(server.url) as c:
                s = StreamClient(c, "mlp_stream")
                done = 0
                for target in (100, args.memory_requests):
                    while done < target:
                        if done % 2:
                            c.infer("conv", {"input": np.swapaxes(pool[done % 32], 0, 1)}, ["output"])
                        else:
                            s.step(steps[done % 64], end=(done % 100) == 98)
                        done += 1
                    time.sleep(0.5)
                    mem[target] = server.rss()
            results["memory"] = {"rss_after_100_MiB": mem[100] / 2**20,
                                 f"rss_after_{args.memory_requests}_MiB": mem[args.memory_requests] / 2**20,
                                 "growth_MiB": (mem[args.memory_requests] - mem[100]) / 2**20,
                                 "growth_percent": 100.0 * (mem[args.memory_requests] - mem[100]) / mem[100]}
        finally:
            rc = server.stop()
        results["server_exit_code"] = rc
        results["left_behind"] = sorted(p.name for p in server.pytriton_home.iterdir())

    results["load_average"] = {"before": load_before, "after": os.getloadavg()}
    base = results["local_runner"]["p50_ms"]
    copy = results["memcpy_request_bytes"]["p50_ms"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    rows = [("local runner (in-process, no server)", "local_runner"), ("memcpy of the request's bytes",
            "memcpy_request_bytes"), ("server, batch 1 (1 client)", "server_batch1"),
            (f"server, dynamic batching ({args.clients} clients)", "server_dynamic_batching"),
            (f"server, streaming ({args.clients} streams)", "server_streaming")]
    m = results["machine"]
    lines = [
        "# Serving benchmark (`benchmarks/bench_serving.py`)", "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['platform']}; Python {m['python']}, torch {m['torch']}, "
        f"onnxruntime {m['onnxruntime']}, numpy {m['numpy']}, nvidia-pytriton {m['nvidia-pytriton']} "
        f"(tritonserver 2.51), tritonclient {m['tritonclient']}. HTTP on loopback (127.0.0.1). One run; 1-min load "
        f"average {results['load_average']['before'][0]:.1f} before, {results['load_average']['after'][0]:.1f} after "
        "(the machine is shared: a load above 2 means other work competed for the 2 cores).", "",
        f"Multi-step model: {results['model']['multistep']}. Streaming model: {results['model']['streaming']}.", "",
        "| path | requests | req/s | p50 ms | p99 ms | p50 vs local runner | p50 vs memcpy |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, key in rows:
        r = results[key]
        lines.append(f"| {label} | {r['requests']} | {r['req_per_s']:.0f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | "
                     f"{r['p50_ms'] / base:.1f}x | {r['p50_ms'] / copy:.0f}x |")
    mem = results["memory"]
    lines += ["", f"Memory of the server process tree (python + tritonserver + backend stub), RSS: "
              f"{mem['rss_after_100_MiB']:.1f} MiB after 100 requests, "
              f"{mem[f'rss_after_{args.memory_requests}_MiB']:.1f} MiB after {args.memory_requests} "
              f"(growth {mem['growth_MiB']:+.1f} MiB, {mem['growth_percent']:+.2f}%).",
              f"Server stopped by SIGTERM with exit code {results['server_exit_code']}; PyTriton workspace entries "
              f"left: {len(results['left_behind'])}.", "",
              "Nearly all of the server's latency is Triton + PyTriton overhead (HTTP, the python backend's IPC), "
              "not the model: compare the local runner row."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
