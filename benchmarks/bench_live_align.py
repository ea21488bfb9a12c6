"""Overhead of live alignment (``TrainConfig.align_every``): training time with it on against off.

Side by side in one run: the tiny preset trains ``--steps`` steps with live alignment off and on
(``align_every`` = each of ``--every``), each in a fresh subprocess on ``--threads`` threads,
in interleaved rounds (off, on, off, on, ...) so machine noise hits both alike.  Reported per
variant: the median wall time of the run (the process's own ``train()`` call, data and teacher
already cached), and for the "on" runs the seconds the measurements took (``align/seconds`` in
metrics.jsonl).  Overhead = (median on - median off) / median off.  Sample grids and evaluation
are off in both, so only the measurement differs.

    python benchmarks/bench_live_align.py                         # tiny preset, 400 steps, align_every 100 and 200
    python benchmarks/bench_live_align.py --steps 2000 --every 100 --rounds 1   # the extended study's length
    python benchmarks/bench_live_align.py --quick                 # a smoke run (seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import finish, header, save  # noqa: E402

CHILD = """
import json, sys, time, torch
from train.run.config import override, preset
from train.run.loop import train
settings, out = json.loads(sys.argv[1]), sys.argv[2]
cfg = override(preset("tiny"), [f"{k}={json.dumps(v)}" for k, v in settings.items()])
torch.set_num_threads(cfg.threads)
start = time.perf_counter()
train(cfg, out, progress=False)
print(json.dumps({"seconds": time.perf_counter() - start}))
"""


def run(settings: dict, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
        proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(settings), out], env=env, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"benchmark child failed: {proc.stderr.strip().splitlines()[-1]}")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        lines = [json.loads(ln) for ln in (Path(out) / "metrics.jsonl").read_text().splitlines() if ln.strip()]
        measured = [ln["align/seconds"] for ln in lines if "align/seconds" in ln]
        res.update(align_calls=len(measured), align_seconds=sum(measured))
        return res


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--every", type=int, nargs="+", default=[100, 200], help="align_every values to time")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="a smoke run: 20 steps of a 2-block model, 1 round")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "live_align.json")
    args = ap.parse_args(argv)
    base = {"steps": args.steps, "threads": args.threads, "sample_every": 0, "eval_every": 0, "log_every": 50,
            "ckpt_every": args.steps, "device": "cpu"}
    if args.quick:
        args.steps, args.every, args.rounds = 20, [10], 1
        base.update({"steps": 20, "ckpt_every": 20, "log_every": 10, "model.depth": 2, "data.n_train": 256,
                     "random_init_encoders": True, "align_images": 32, "align_train_images": 16, "align_token_samples": 100})
    variants = {"off": {**base, "align_every": 0}, **{f"every-{e}": {**base, "align_every": e} for e in args.every}}
    res = {**header("bench_live_align.py", argv if argv is not None else sys.argv[1:], args.threads),
           "steps": args.steps, "rounds": args.rounds, "runs": {name: [] for name in variants}}
    for _ in range(args.rounds):
        for name, settings in variants.items():
            res["runs"][name].append(run(settings, args.threads))
            save(res, args.json)
    off = statistics.median(r["seconds"] for r in res["runs"]["off"])
    res["summary"] = {}
    for name in variants:
        med = statistics.median(r["seconds"] for r in res["runs"][name])
        res["summary"][name] = {"median_seconds": round(med, 2), "overhead": round((med - off) / off, 4),
                                "align_calls": res["runs"][name][0]["align_calls"],
                                "align_seconds_median": round(statistics.median(r["align_seconds"] for r in res["runs"][name]), 2)}
    finish(res)
    save(res, args.json)
    for name, s in res["summary"].items():
        print(f"{name:>10}: {s['median_seconds']:7.2f} s  overhead {100 * s['overhead']:+5.1f} %  "
              f"({s['align_calls']} measurements, {s['align_seconds_median']:.2f} s)")
    return res


if __name__ == "__main__":
    main()
