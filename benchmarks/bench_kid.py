"""KID's kernel, the ``**`` form it replaced and the in-place products of
``train.evaluation.generation_metrics._poly_kernel``, side by side (alternating, twice each) on one
thread: ``OMP_NUM_THREADS=1 python benchmarks/bench_kid.py``.  2,000 x 10,000 random 128-d features,
100 subsets of 1,000 (the training evaluator's case); prints seconds and the two results."""

import time

import numpy as np

from train.evaluation import generation_metrics as gm


def main() -> None:
    rng = np.random.default_rng(0)
    fake, real = rng.normal(size=(2000, 128)), rng.normal(size=(10000, 128)) + 0.05
    new = gm._poly_kernel
    old = lambda a, b, d, g, c: (a @ b.T * g + c) ** d  # noqa: E731 - the form before 2026-12-05
    try:
        for name, kernel in (("old", old), ("new", new)) * 2:
            gm._poly_kernel = kernel
            t = time.perf_counter()
            res = gm.kid(fake, real)
            print(f"{name}: {time.perf_counter() - t:.2f} s  kid {res['kid']!r}  kid_std {res['kid_std']!r}", flush=True)
    finally:
        gm._poly_kernel = new


if __name__ == "__main__":
    main()
