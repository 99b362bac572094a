"""Serving past one machine, on one machine: `dsr-deploy serve` replicas behind nginx vs one replica direct.

Measured in one run, on the same exported models and inputs (loopback, 127.0.0.1):

* 1 replica, direct: the client talks to the server;
* 1 replica behind nginx: the balancer's hop alone (consistent hashing on ``X-DSR-Sequence-Id``);
* 2 replicas behind nginx: the documented set-up (each stream kept on its replica by the header).

Each with 8 concurrent streams (one time step per request, server-side membranes) and 8 concurrent multi-step
clients (dynamic batching). On a 2-core machine the two replicas share the same 2 cores, so this shows the
balancer's cost, not scaling: more replicas add throughput only where each gets its own cores (or GPU).

Usage: python benchmarks/bench_serving_balancer.py [--requests N] [--out benchmarks/results/serving_balancer]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the small DSR nets the tests use
sys.path.insert(0, str(HERE))

from bench_serving import concurrent, machine, served_models  # noqa: E402

from dsr_deploy.serving.balancer import NginxProcess, find_nginx  # noqa: E402
from dsr_deploy.serving.client import ServeClient, StreamClient  # noqa: E402
from dsr_deploy.serving.process import ServerProcess, free_ports  # noqa: E402


def measure(url, clients, per_client, pool, steps):
    """Streams and multi-step clients against ``url``; every stream's outputs compared with the direct run's."""
    def stream_call(c, k):
        s = StreamClient(c, "mlp_stream")
        return lambda i: s.step(steps[(k + i) % len(steps)], end=(i % 50) == 49)

    def multi_call(c, k):
        return lambda i: c.infer("conv", {"input": np.swapaxes(pool[(k + i) % len(pool)], 0, 1)}, ["output"])

    with ServeClient(url) as c:  # warm-up
        for i in range(20):
            multi_call(c, 0)(i)
    return {"streaming": concurrent(url, clients, per_client, stream_call),
            "multistep_dynamic_batching": concurrent(url, clients, per_client, multi_call)}


def median_row(rows):
    """The median of each figure over the rounds (requests: their sum)."""
    out = {k: float(np.median([r[k] for r in rows])) for k in ("req_per_s", "p50_ms", "p99_ms", "mean_ms")}
    out["requests"] = sum(r["requests"] for r in rows)
    out["rounds"] = len(rows)
    return out


def round_range(results, key, work):
    """The lowest and highest req/s of one row over the rounds (the run-to-run spread on this machine)."""
    values = [r[work]["req_per_s"] for r in results["rounds"][key]]
    return min(values), max(values)


def markdown(results, clients):
    m = results["machine"]
    load = results["load_average"]
    lines = [
        "# Replicas behind a balancer (`benchmarks/bench_serving_balancer.py`)", "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['platform']}; Python {m['python']}, nvidia-pytriton "
        f"{m['nvidia-pytriton']} (tritonserver 2.51), tritonclient {m['tritonclient']}, {results['nginx']}. "
        f"Loopback (127.0.0.1). One run of {results['rounds_n']} rounds over the three set-ups in turn, each round "
        "in another order (each row: the median over the rounds; requests: all rounds); "
        f"1-min load average {load['before'][0]:.1f} before, {load['after'][0]:.1f} after (the machine is shared: "
        "a load above 2 means other work competed for the 2 cores).", "",
        f"Models: {results['model']['streaming']} (streams: one step per request, {clients} concurrent, a sequence "
        f"ends every 50 steps); {results['model']['multistep']} ({clients} concurrent clients).", "",
        "**On 2 cores this shows the balancer's cost, not scaling**: both replicas and nginx share the same 2 cores. "
        "More replicas add throughput where each has its own cores or GPU. Compare the rows with the per-round "
        "spread: a difference smaller than it is this shared machine's noise, not the balancer.", "",
        "| set-up | workload | requests | req/s | req/s per round (min-max) | p50 ms | p99 ms | req/s vs 1 direct |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, key in (("1 replica, direct", "direct_1"), ("1 replica behind nginx", "nginx_1"),
                       ("2 replicas behind nginx (hash on X-DSR-Sequence-Id)", "nginx_2")):
        for work in ("streaming", "multistep_dynamic_batching"):
            r, base = results[key][work], results["direct_1"][work]
            lo, hi = round_range(results, key, work)
            lines.append(f"| {label} | {work.replace('_', ' ')} | {r['requests']} | {r['req_per_s']:.0f} | "
                         f"{lo:.0f}-{hi:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                         f"{r['req_per_s'] / base['req_per_s']:.2f}x |")
    lines += ["", f"Streams through nginx to 2 replicas: every sequence's steps went to one replica "
              f"({results['affinity']['sequences']} sequences, {results['affinity']['split']} split), "
              f"{results['affinity']['per_replica']} steps per replica."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=800, help="requests per row (over all clients)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3, help="rounds over the three set-ups; each row is the median")
    ap.add_argument("--out", default=str(HERE / "results" / "serving_balancer"))
    args = ap.parse_args(argv)
    nginx_bin = find_nginx()
    if nginx_bin is None:
        sys.exit("nginx is not installed (Debian: apt-get install nginx-light)")
    import subprocess

    version = subprocess.run([nginx_bin, "-v"], capture_output=True, text=True).stderr.strip().split(": ")[-1]
    load_before = os.getloadavg()
    rng = np.random.default_rng(0)
    per_client = args.requests // args.clients
    # Short folder: PyTriton's IPC socket paths live in its workspace and may not exceed 107 bytes.
    with tempfile.TemporaryDirectory(prefix="bsb", dir="/tmp") as tmp:
        tmp = Path(tmp)
        multi, stream, pool, steps = served_models(tmp, rng)
        results = {"machine": machine(), "nginx": version,
                   "model": {"multistep": "conv-BN-IF -> linear-LIF, input [1, 6, 2, 8, 8], ONNX, onnxruntime CPU",
                             "streaming": "linear-LIF -> linear-IF, x_t [1, 6], ONNX"},
                   "requests_per_round": per_client * args.clients, "clients": args.clients,
                   "rounds_n": args.rounds}
        replicas = [ServerProcess(tmp / f"r{i}", [multi, stream], ["--max-batch", "16"]) for i in range(2)]
        try:
            p1, p2 = free_ports(2)
            ups = [r.url for r in replicas]
            with NginxProcess(tmp / "nginx", {p1: "one", p2: "two"},
                              {"one": (ups[:1], True), "two": (ups, True)}) as nginx:
                urls = {"direct_1": replicas[0].url, "nginx_1": f"127.0.0.1:{p1}", "nginx_2": f"127.0.0.1:{p2}"}
                rounds: dict = {key: [] for key in urls}
                keys = list(urls)
                for i in range(args.rounds):  # the set-ups in turn, each round in another order: drifting load
                    for key in keys[i % 3:] + keys[:i % 3]:  # and warm-up hit each alike
                        rounds[key].append(measure(urls[key], args.clients, per_client, pool, steps))
                for key in urls:
                    results[key] = {work: median_row([r[work] for r in rounds[key]]) for work in rounds[key][0]}
                results["rounds"] = rounds
                where: dict = {}
                for port, sid, ups_addr, _ in nginx.routes():
                    if port == p2 and sid:
                        where.setdefault(sid, set()).add(ups_addr)
                per = {u: sum(1 for p, s, a, _ in nginx.routes() if p == p2 and s and a == u) for u in ups}
                results["affinity"] = {"sequences": len(where), "split": sum(len(v) > 1 for v in where.values()),
                                       "per_replica": list(per.values())}
        finally:
            for r in replicas:
                r.__exit__(None, None, None)
    results["load_average"] = {"before": load_before, "after": os.getloadavg()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results, args.clients)
    out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
