"""Linear probes for a layer x t sweep: all probes trained as one batched model against one probe
per (layer, t), and against scikit-learn.

Side by side in one run, on the same synthetic features and splits:

* ``batched``  ``probe.linear.probe_accuracy(method="torch")`` on all P probes at once (the
  paper's protocol: parameter-free BatchNorm + linear, Adam 1e-3 with cosine decay, 90 epochs,
  batch 16,384; the P probes are one stacked model, one optimizer, the summed loss);
* ``one-at-a-time``  the same function called once per probe on its ``(1, N, D)`` slice (same code,
  same seed: each probe is trained alone);
* ``sklearn``  ``probe_accuracy(method="sklearn")``: a standardised scikit-learn
  ``LogisticRegression`` (lbfgs, up to 1,000 iterations) per probe.

Features are synthetic and shaped like a real sweep: P = layers x ts probes (6 x 3 = 18 by
default), N_train training and N_train / 4 held-out images, width D, 10 classes.  Probe p's
features are ``a_p * mu_p[y] / sqrt(D) * sqrt(2) + noise`` (class means ``mu`` and noise standard
normal), then scaled per feature by ``exp(N(0, 0.5^2))`` and shifted, so that the BatchNorm /
standardisation matters; the signal ``a_p`` rises and falls over the layers and shrinks with t, as
the REPA paper's curves do, so the accuracies spread over a useful range.

Before timing, the batched and the one-at-a-time probes are fitted on (at most) the first 500
training images and their weights compared (``torch.testing.assert_close``); the timed accuracies
of the two are compared again.  Each size runs the three methods in rounds (batched, one at a time,
sklearn, repeat) while the size's time budget lasts and reports the fastest round of each.

    python benchmarks/bench_linear_probe.py            # N_train x D = 2k x 128, 10k x 128, 2k x 768; about 3 minutes on one core
    python benchmarks/bench_linear_probe.py --sizes 5000x384 10000x768 --repeats 1   # larger (minutes each)
    python benchmarks/bench_linear_probe.py --quick    # a few seconds, no JSON unless --json
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import finish, header, save  # noqa: E402

DEFAULT_JSON = ROOT / "benchmarks" / "results" / "linear_probe_cpu.json"
METHODS = ("batched", "one-at-a-time", "sklearn")




def signal(layer: int, n_layers: int, t: float) -> float:
    """Class signal of probe (layer, t): rises and falls over the layers, shrinks with the noise."""
    return (0.6 + 2.4 * math.sin(math.pi * (layer + 1) / (n_layers + 1))) * (1.0 - 0.8 * t)


def synthetic_sweep(n_layers: int, ts, n_train: int, n_test: int, dim: int, classes: int, seed: int = 0):
    """``(x_train (P, N, D), y_train (N,), x_test (P, M, D), y_test (M,), signals (P,))``, P = layers x ts
    in layer-major order (as ``probe.extract.Features.values.flatten(0, 1)``)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    n = n_train + n_test
    y = torch.randint(0, classes, (n,), generator=g)
    signals = [signal(layer, n_layers, t) for layer in range(n_layers) for t in ts]
    xs = []
    for a in signals:
        mu = torch.randn(classes, dim, generator=g)
        x = torch.randn(n, dim, generator=g).add_(mu[y], alpha=a * math.sqrt(2.0 / dim))
        x.mul_(torch.randn(dim, generator=g).mul_(0.5).exp_()).add_(torch.randn(dim, generator=g))
        xs.append(x)
    x = torch.stack(xs)
    return x[:, :n_train].contiguous(), y[:n_train], x[:, n_train:].contiguous(), y[n_train:], signals


def methods(classes: int, epochs: int):
    import torch

    from probe.linear import probe_accuracy

    def batched(xtr, ytr, xte, yte):
        return probe_accuracy(xtr, ytr, xte, yte, classes, method="torch", epochs=epochs)

    def one_at_a_time(xtr, ytr, xte, yte):
        return torch.cat([probe_accuracy(xtr[p:p + 1], ytr, xte[p:p + 1], yte, classes, method="torch", epochs=epochs)
                          for p in range(len(xtr))])

    def sklearn(xtr, ytr, xte, yte):
        return probe_accuracy(xtr, ytr, xte, yte, classes, method="sklearn")

    return {"batched": batched, "one-at-a-time": one_at_a_time, "sklearn": sklearn}


def check_same_probes(xtr, ytr, classes: int, epochs: int, n: int = 500) -> float:
    """Fit the batched probes and each probe alone on the first ``n`` images; weights must agree.
    Returns the largest absolute weight difference."""
    import torch

    from probe.linear import fit_linear_probes

    xs, ys = xtr[:, :n], ytr[:n]
    together = fit_linear_probes(xs, ys, classes, epochs=epochs)
    diff = 0.0
    for p in range(len(xs)):
        alone = fit_linear_probes(xs[p:p + 1], ys, classes, epochs=epochs)
        torch.testing.assert_close(alone.weight[0], together.weight[p], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(alone.bias[0], together.bias[p], rtol=1e-4, atol=1e-5)
        diff = max(diff, (alone.weight[0] - together.weight[p]).abs().max().item())
    return diff


def run_size(n_layers: int, ts, n_train: int, dim: int, classes: int, epochs: int, ways, repeats: int, budget_s: float) -> dict:
    n_test = max(n_train // 4, classes)
    xtr, ytr, xte, yte, signals = synthetic_sweep(n_layers, ts, n_train, n_test, dim, classes)
    weight_diff = check_same_probes(xtr, ytr, classes, epochs)
    fns = methods(classes, epochs)
    times: dict = {m: [] for m in ways}
    accs: dict = {}
    spent = 0.0
    while not times[ways[0]] or (len(times[ways[0]]) < repeats and spent < budget_s):
        for m in ways:
            t0 = time.perf_counter()
            accs[m] = fns[m](xtr, ytr, xte, yte)
            times[m].append(time.perf_counter() - t0)
            spent += times[m][-1]
    res = {"probes": len(xtr), "n_train": n_train, "n_test": n_test, "dim": dim, "classes": classes, "epochs": epochs,
           "check_weights_max_abs_diff": weight_diff, "signals": [round(s, 3) for s in signals], "methods": {}}
    for m in ways:
        best = min(times[m])
        res["methods"][m] = {"seconds": best, "all_seconds": times[m], "x_batched": best / min(times["batched"]),
                             "accuracy_mean": accs[m].mean().item(), "accuracy_min": accs[m].min().item(),
                             "accuracy_max": accs[m].max().item(), "accuracies": [round(a, 4) for a in accs[m].tolist()]}
    if "one-at-a-time" in accs:
        diff = (accs["one-at-a-time"] - accs["batched"]).abs().max().item()
        res["batched_vs_one_at_a_time_max_abs_acc_diff"] = diff
        assert diff <= 1.0 / n_test + 1e-6, f"batched and one-at-a-time accuracies differ by {diff}"
    if "sklearn" in accs:
        res["torch_vs_sklearn_mean_abs_acc_diff"] = (accs["sklearn"] - accs["batched"]).abs().mean().item()
    return res


def report(res: dict) -> str:
    m = res["machine"]
    lines = [f"command: {res['command']}",
             f"{res['date']}, {m['cpu']}, {m['threads']} thread(s), torch {m['torch']}, scikit-learn {m['sklearn']}",
             "", "| probes | N_train | N_test | D | method | seconds | time / batched | accuracy mean (min-max) |",
             "|---:|---:|---:|---:|---|---:|---:|---|"]
    for s in res["sizes"]:
        for name, d in s["methods"].items():
            lines.append(f"| {s['probes']} | {s['n_train']} | {s['n_test']} | {s['dim']} | {name} | {d['seconds']:.2f} | "
                         f"{d['x_batched']:.2f}x | {d['accuracy_mean']:.3f} ({d['accuracy_min']:.3f}-{d['accuracy_max']:.3f}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["2000x128", "10000x128", "2000x768"], help="N_TRAINxD, one run each")
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--ts", type=float, nargs="+", default=[0.0, 0.25, 0.5])
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=90)
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--repeats", type=int, default=3, help="rounds per size while its time budget lasts (fastest reported)")
    ap.add_argument("--budget", type=float, default=20.0, help="seconds per size after which no new round starts")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, help=f"results file (default {DEFAULT_JSON.relative_to(ROOT)}; none with --quick)")
    ap.add_argument("--quick", action="store_true", help="small run (2 layers x 2 t, N_train 400, D 32, 10 epochs, one round)")
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.layers, args.ts, args.epochs, args.repeats = ["400x32"], 2, [0.0, 0.5], 10, 1
    elif args.json is None:
        args.json = DEFAULT_JSON
    if "batched" not in args.methods:
        args.methods = ["batched", *args.methods]
    try:
        sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes]
        assert all(len(s) == 2 for s in sizes)
    except (ValueError, AssertionError):
        ap.error(f"--sizes takes N_TRAINxD values such as 5000x384, got {args.sizes}")

    import sklearn
    import torch
    from threadpoolctl import threadpool_limits

    threads_before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        with threadpool_limits(args.threads):  # numpy / scipy BLAS under scikit-learn
            res: dict = {**header("bench_linear_probe.py", sys.argv[1:] if argv is None else argv, args.threads,
                                  sklearn=sklearn.__version__),
                         "protocol": "synthetic features, layers x ts probes, probe_accuracy torch (batched / one probe per call) "
                                     "and sklearn; fastest of the rounds run within the budget",
                         "layers": args.layers, "ts": list(args.ts), "sizes": []}
            for n_train, dim in sizes:
                res["sizes"].append(run_size(args.layers, tuple(args.ts), n_train, dim, args.classes, args.epochs,
                                             args.methods, args.repeats, args.budget))
                save(res, args.json)
            finish(res)
    finally:
        torch.set_num_threads(threads_before)
    save(res, args.json)
    print(report(res), flush=True)
    return res


if __name__ == "__main__":
    main()
