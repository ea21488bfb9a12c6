"""Wall time and peak memory of the alignment metrics in ``probe.metrics``: the blocked public
functions side by side with the dense brute-force forms (N x N matrices, O(N^3) unbiased HSIC, as
the reference platonic-rep code computes them).

Each (metric, implementation, N) case runs in its own subprocess, so its peak memory is its own:
the process's peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``; it includes the Python/torch runtime
and the two input matrices, also reported separately) or, with ``--device cuda``, the peak CUDA
allocation. Each case first runs the metric once on 64 rows (warm-up), then times up to
``--repeats`` calls, stopping once 10 s have been spent, and reports the fastest (the same rule
for both implementations; the dense forms at large N therefore run once): its wall time and its
process CPU time (all threads; less sensitive than wall time to other load on the machine).

    python benchmarks/bench_metrics.py            # N = 1k .. 50k, width 1152, dense up to 8k
    python benchmarks/bench_metrics.py --quick    # small smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METRICS = ("cknna", "cka", "unbiased_cka", "mutual_knn")


def _functions(metric: str, impl: str):
    from probe import metrics as m

    k = 10
    return {
        ("cknna", "blocked"): lambda a, b: m.cknna(a, b, k),
        ("cknna", "dense"): lambda a, b: m._cknna_dense(a, b, k),
        ("cka", "blocked"): lambda a, b: m.cka(a, b),
        ("cka", "dense"): lambda a, b: m._cka_dense(a, b),
        ("unbiased_cka", "blocked"): lambda a, b: m.cka(a, b, unbiased=True),
        ("unbiased_cka", "dense"): lambda a, b: m._cka_dense(a, b, unbiased=True),
        ("mutual_knn", "blocked"): lambda a, b: m.mutual_knn(a, b, k),
        ("mutual_knn", "dense"): lambda a, b: m._mutual_knn_dense(a, b, k),
    }[metric, impl]


def run_case(metric: str, impl: str, n: int, width: int, device: str, threads: int, repeats: int) -> dict:
    """Time one metric call on a seeded correlated pair of unit-norm (n, width) float32 matrices."""
    import psutil
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    a = F.normalize(torch.randn(n, width, generator=g), dim=1)
    b = F.normalize(a + torch.randn(n, width, generator=g), dim=1)
    a, b = a.to(device), b.to(device)
    fn = _functions(metric, impl)
    fn(a[:64], b[:64])
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    rss_before = psutil.Process().memory_info().rss
    times: list[tuple[float, float]] = []  # (wall, process CPU) seconds
    while len(times) < repeats and sum(t for t, _ in times) < 10:
        sync()
        start, cpu_start = time.perf_counter(), time.process_time()
        value = fn(a, b)
        sync()
        times.append((time.perf_counter() - start, time.process_time() - cpu_start))
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"metric": metric, "impl": impl, "n": n, "seconds": min(times)[0], "cpu_seconds": min(times)[1], "value": value, "peak_bytes": peak, "rss_before_bytes": rss_before}


def _child_env() -> dict[str, str]:
    # Idle OpenMP workers spin by default; on a shared, oversubscribed machine that spinning takes
    # the cores from the main thread and inflates every small parallel op (10x on cknna at N = 500).
    return {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}


def _spawn(metric: str, impl: str, n: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--case", metric, impl, str(n), "--width", str(args.width), "--device", args.device, "--threads", str(args.threads), "--repeats", str(args.repeats)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=_child_env()).stdout
    return json.loads(out.strip().splitlines()[-1])


def _seconds(case: dict) -> str:
    return f"{case['seconds']:.2f} ({case['cpu_seconds']:.2f})"


def _gib(x: float) -> str:
    return f"{x / 2**30:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 4000, 8000, 10000, 50000])
    ap.add_argument("--dense-max", type=int, default=8000, help="largest N for the dense forms")
    ap.add_argument("--width", type=int, default=1152)
    ap.add_argument("--metrics", nargs="+", choices=METRICS, default=list(METRICS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3, help="best of up to this many timed calls (within 10 s)")
    ap.add_argument("--quick", action="store_true", help="small run: N = 500, 1000, 2000 at width 256 (overrides --sizes, --dense-max, --width)")
    ap.add_argument("--case", nargs=3, metavar=("METRIC", "IMPL", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        metric, impl, n = args.case
        print(json.dumps(run_case(metric, impl, int(n), args.width, args.device, args.threads, args.repeats)))
        return
    if args.quick:
        args.sizes, args.dense_max, args.width = [500, 1000, 2000], 2000, 256

    import torch

    memory = "peak CUDA allocation" if args.device.startswith("cuda") else "peak RSS"
    print(f"command: python {' '.join(sys.argv)}")
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, threads={args.threads}, device={args.device}")
    print(f"float32, width {args.width}, k = 10, unit-norm correlated pair; memory = {memory} (GiB)")
    print(f"OMP_WAIT_POLICY={_child_env()['OMP_WAIT_POLICY']}; load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    print(f"| N | metric | blocked wall (CPU) s | dense wall (CPU) s | speed-up wall (CPU) | blocked {memory} | dense {memory} | inputs RSS | abs diff |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.sizes:
        for metric in args.metrics:
            blocked = _spawn(metric, "blocked", n, args)
            dense = _spawn(metric, "dense", n, args) if n <= args.dense_max else None
            cells = [str(n), metric, _seconds(blocked)]
            if dense:
                ratio = (dense["seconds"] / blocked["seconds"], dense["cpu_seconds"] / max(blocked["cpu_seconds"], 1e-9))
                cells += [_seconds(dense), f"{ratio[0]:.1f}x ({ratio[1]:.1f}x)"]
            else:
                cells += ["-", "-"]
            cells += [_gib(blocked["peak_bytes"]), _gib(dense["peak_bytes"]) if dense else "-", _gib(blocked["rss_before_bytes"])]
            cells.append(f"{abs(blocked['value'] - dense['value']):.1e}" if dense else "-")
            print("| " + " | ".join(cells) + " |", flush=True)
    print(f"\nload average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
