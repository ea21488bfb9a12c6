"""Sampling speed of the tiny preset on the CPU, side by side: glibc's allocator as it comes or with
freed memory kept (``train.run.allocator.keep_freed_memory``), and the MLP's GELU(tanh) by ATen's kernel
or by ``x sigmoid(2z)`` (``train.models.architecture.inference_gelu``, what sampling uses).

Each of the four settings samples the same ``--chunk`` fixed-noise images with ``--steps`` Euler steps
(the training evaluation's unit of work: ``train.evaluation.samples``) in a fresh process of its own
(an allocator setting holds for the life of a process), ``--repeats`` times; the settings take turns
over ``--rounds`` rounds so that the machine's drift falls on all of them.  Reported per setting: the
median seconds per chunk over every repeat of every round, and how far its samples are from the
reference setting's (default allocator, ATen's GELU): the allocator must not change a bit, the GELU
may move the last bits only.

    python benchmarks/bench_sampling.py --json benchmarks/results/sampling_cpu.json
    python benchmarks/bench_sampling.py --quick          # a smoke run (seconds)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import finish, header, save  # noqa: E402

SETTINGS = [("default", "aten"), ("kept", "aten"), ("default", "inference"), ("kept", "inference")]


def worker(alloc: str, gelu: str, chunk: int, steps: int, repeats: int, seed: int, checkpoint: str | None,
           samples_out: str) -> dict:
    """One setting in this process: seconds per chunk for each repeat; the samples written to ``samples_out``."""
    import time

    import torch

    from train.evaluation.sampling import sample
    from train.models import architecture
    from train.models.loading import build_model, load
    from train.run.allocator import keep_freed_memory
    from train.run.config import preset

    kept = keep_freed_memory() if alloc == "kept" else False
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)  # as the training loop
    if checkpoint:
        model = load(checkpoint, weights="ema")
    else:
        torch.manual_seed(seed)
        model = build_model(preset("tiny").model)
    model.eval()
    cfg = model.cfg
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(chunk, cfg.in_channels, cfg.input_size, cfg.input_size, generator=gen)
    labels = torch.arange(chunk) % cfg.num_classes
    if gelu == "aten":  # sampling turns the inference GELU on: undo it for this process
        architecture.gelu_tanh_inference = lambda h: torch.nn.functional.gelu(h, approximate="tanh")
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        x = sample(model, noise, labels, "euler", steps)
        seconds.append(time.perf_counter() - start)
    torch.save(x, samples_out)
    return {"seconds": seconds, "allocator_kept": kept}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint", help="a tiny-preset checkpoint (default: fresh weights of the preset)")
    ap.add_argument("--quick", action="store_true", help="8 images, 3 steps, 1 repeat, 1 round")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--worker", nargs=3, metavar=("ALLOC", "GELU", "SAMPLES_OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.chunk, args.steps, args.repeats, args.rounds = 8, 3, 1, 1
    if args.worker:
        alloc, gelu, out = args.worker
        print(json.dumps(worker(alloc, gelu, args.chunk, args.steps, args.repeats, args.seed, args.checkpoint, out)))
        return {}

    import tempfile

    import torch

    res = header("bench_sampling.py", argv if argv is not None else sys.argv[1:], 1)
    res.update(chunk=args.chunk, steps=args.steps, repeats=args.repeats, rounds=args.rounds, checkpoint=args.checkpoint,
               settings={})
    times: dict[str, list[float]] = {f"{a}/{g}": [] for a, g in SETTINGS}
    kept: dict[str, bool] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.rounds):
            for alloc, gelu in SETTINGS:
                name = f"{alloc}/{gelu}"
                cmd = [sys.executable, str(Path(__file__).resolve()), "--chunk", str(args.chunk), "--steps", str(args.steps),
                       "--repeats", str(args.repeats), "--seed", str(args.seed), "--worker", alloc, gelu,
                       str(Path(tmp) / f"{alloc}-{gelu}.pt")]
                if args.checkpoint:
                    cmd += ["--checkpoint", args.checkpoint]
                done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                                      env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
                if done.returncode:
                    raise RuntimeError(f"worker {name} failed: {done.stderr.strip().splitlines()[-1:]}")
                out = json.loads(done.stdout.strip().splitlines()[-1])
                times[name] += out["seconds"]
                kept[name] = out["allocator_kept"]
        ref = torch.load(Path(tmp) / "default-aten.pt", weights_only=True)
        for alloc, gelu in SETTINGS:
            name = f"{alloc}/{gelu}"
            x = torch.load(Path(tmp) / f"{alloc}-{gelu}.pt", weights_only=True)
            res["settings"][name] = {"median_s": statistics.median(times[name]), "seconds": times[name],
                                     "allocator_kept": kept[name], "bitwise_equal_to_default_aten": bool(torch.equal(x, ref)),
                                     "max_abs_diff_to_default_aten": float((x - ref).abs().max())}
    base = res["settings"]["default/aten"]["median_s"]
    for s in res["settings"].values():
        s["speedup_vs_default_aten"] = base / s["median_s"]
    finish(res)
    save(res, args.json)
    print(f"one {args.chunk}-image chunk, {args.steps} Euler steps, median of {args.rounds} rounds x {args.repeats}:")
    for name, s in res["settings"].items():
        print(f"  allocator {name.split('/')[0]:<8} GELU {name.split('/')[1]:<10} {s['median_s']:7.3f} s  "
              f"x{s['speedup_vs_default_aten']:.2f}  bitwise equal: {s['bitwise_equal_to_default_aten']}  "
              f"max |diff| {s['max_abs_diff_to_default_aten']:.1e}")
    return res


if __name__ == "__main__":
    main()
