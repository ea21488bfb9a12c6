"""Where one training-time evaluation spends its time (``train.evaluation.evaluate.build_training_evaluator``).

The tiny preset's evaluation as ``make extended`` runs it (``--samples`` fixed-noise samples, 25 Euler
steps, scored with the shipped evaluator against the 10,000 test images, then its two halves), on a
model freshly initialised from ``--seed`` (sampling costs the same for any weights) or ``--checkpoint``:

* ``evaluation_s``: the whole evaluation as the loop calls it; then its parts measured apart on the
  same samples: ``sampling_s`` (``generate_spec`` with the evaluator's own spec: the model's forward
  passes) and the scoring of those samples, three ways side by side: ``scoring_per_half_extraction_s``
  (before session 9: ``evaluate_samples`` on all samples and on each half, each extracting features and
  computing FD, KID and precision/recall), ``scoring_s`` (now, ``score_with_halves``: features once, FD and
  KID of the halves only, at a run's first evaluation) and ``scoring_warm_s`` (any later evaluation, KID's
  reference kernel sums kept); ``scoring_same_numbers`` checks the two ways give the same numbers to the
  bit. On a shared machine the parts need not add up to the whole;
* the op-level profile of one sampling chunk (``torch.profiler``, self CPU time per aten op, top ops);
* the MLP's activation alone on its tensor shape (chunk x tokens, hidden): ATen's ``GELU(approximate="tanh")``
  (the published SiT MLP; training's kernel) and the same function as ``x sigmoid(2z)`` (sampling's,
  ``train.models.architecture.gelu_tanh_inference``) against exact GELU and the ``fc1`` matmul, median
  of ``--repeats``.

The process keeps freed memory as the training loop's does (``train.run.allocator``); the four
settings side by side: ``benchmarks/bench_sampling.py``.

    python benchmarks/bench_evaluation.py --json benchmarks/results/evaluation_cpu.json
    python benchmarks/bench_evaluation.py --quick          # a smoke run (seconds)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import finish, header, save  # noqa: E402


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--checkpoint", help="a tiny-preset checkpoint (default: fresh weights of the preset)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="16 samples, 3 repeats")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.quick:
        args.samples, args.repeats = 16, 3

    import torch

    threads_before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _measure(args, argv)
    finally:
        torch.set_num_threads(threads_before)


def _measure(args: argparse.Namespace, argv: list[str] | None) -> dict:
    import dataclasses

    import torch
    from torch.profiler import ProfilerActivity, profile

    from train.evaluation.evaluate import build_training_evaluator, evaluate_samples, generate_spec, score_with_halves
    from train.evaluation.feature_nets import EVALUATOR, load_feature_net, reference
    from train.models.architecture import gelu_tanh_inference
    from train.models.loading import build_model, load
    from train.run.allocator import keep_freed_memory
    from train.run.config import override, preset

    kept = keep_freed_memory()  # as the training loop's set-up does
    cfg = override(preset("tiny"), [f"eval_samples={args.samples}", f"seed={args.seed}"])
    res = header("bench_evaluation.py", argv if argv is not None else sys.argv[1:], args.threads, allocator_kept=str(kept))
    res.update(samples=args.samples, sample_steps=cfg.sample_steps, checkpoint=args.checkpoint)

    if args.checkpoint:
        model = load(args.checkpoint, weights="ema")
    else:
        torch.manual_seed(args.seed)
        model = build_model(cfg.model)
    model.eval()

    # the whole evaluation, as the training loop calls it (the evaluator and reference are loaded first)
    evaluate = build_training_evaluator(cfg)
    start = time.perf_counter()
    res["fd"] = evaluate(model, 0)["fd"]
    res["evaluation_s"] = time.perf_counter() - start

    # its parts, on the same samples (the evaluator's own spec; its network and reference come from the cache)
    spec, codec = evaluate.spec, evaluate.codec
    start = time.perf_counter()
    images, labels = generate_spec(model, spec, codec)
    res["sampling_s"] = time.perf_counter() - start
    net = load_feature_net(EVALUATOR, None, progress=False, dataset=cfg.data.dataset)
    ref = reference(net, cfg.data.dataset, cfg.eval_ref_split, 10_000, cfg.data.image_size, cfg.data.root, progress=False)
    half = len(images) // 2
    start = time.perf_counter()  # before session 9: all samples, then each half, each extracting its features
    whole, a, b = (evaluate_samples(images[part], labels[part], net, ref) for part in (slice(None), slice(0, half), slice(half, 2 * half)))
    res["scoring_per_half_extraction_s"] = time.perf_counter() - start
    before = {**whole, "fd_half_a": a["fd"], "kid_half_a": a["kid"], "fd_half_b": b["fd"], "kid_half_b": b["kid"]}
    memo: dict = {}
    for key in ("scoring_s", "scoring_warm_s"):  # now: a run's first evaluation, then any later one (KID's memo kept)
        start = time.perf_counter()
        scored = score_with_halves(images, labels, net, ref, memo)
        res[key] = time.perf_counter() - start
    res["scoring_same_numbers"] = all(scored[k] == before[k] for k in scored)
    save(res, args.json)

    # op-level profile of one sampling chunk
    one = dataclasses.replace(spec, n=min(spec.chunk, spec.n))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        generate_spec(model, one, codec)
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ops)
    res["chunk_profile"] = {"chunk": one.n, "total_ms": total / 1e3,
                            "top_ops": [{"op": e.key, "self_ms": e.self_cpu_time_total / 1e3,
                                         "share": round(e.self_cpu_time_total / total, 4), "calls": e.count}
                                        for e in ops[:8]]}
    save(res, args.json)

    # the MLP's activation on its own shape
    hidden = int(cfg.model.hidden_size * cfg.model.mlp_ratio)
    tokens = (cfg.model.input_size // int(cfg.model.name.rsplit("/", 1)[1])) ** 2  # SiT-T/2: patch 2
    x = torch.randn(spec.chunk * tokens, hidden)
    fc1 = torch.nn.Linear(cfg.model.hidden_size, hidden)
    x_in = torch.randn(spec.chunk * tokens, cfg.model.hidden_size)
    with torch.no_grad():
        res["mlp_ops_ms"] = {"shape": [spec.chunk * tokens, hidden],
                             "gelu_tanh": median_ms(lambda: torch.nn.functional.gelu(x, approximate="tanh"), args.repeats),
                             "gelu_tanh_inference": median_ms(lambda: gelu_tanh_inference(x), args.repeats),
                             "gelu_exact": median_ms(lambda: torch.nn.functional.gelu(x), args.repeats),
                             "fc1_linear": median_ms(lambda: fc1(x_in), args.repeats)}
    finish(res)
    save(res, args.json)
    print(f"evaluation of {args.samples} samples: {res['evaluation_s']:.1f} s (sampling {res['sampling_s']:.1f} s, "
          f"scoring {res['scoring_s']:.1f} s, later evaluations {res['scoring_warm_s']:.1f} s; "
          f"before session 9 {res['scoring_per_half_extraction_s']:.1f} s; same numbers: {res['scoring_same_numbers']})")
    for op in res["chunk_profile"]["top_ops"]:
        print(f"  {op['op']:<36} {op['self_ms']:9.1f} ms  {100 * op['share']:5.1f} %  ({op['calls']} calls)")
    m = res["mlp_ops_ms"]
    print(f"MLP on {m['shape']}: GELU(tanh) {m['gelu_tanh']:.2f} ms (as x sigmoid(2z): {m['gelu_tanh_inference']:.2f} ms), "
          f"exact GELU {m['gelu_exact']:.2f} ms, "
          f"fc1 {m['fc1_linear']:.2f} ms")
    return res


if __name__ == "__main__":
    main()
