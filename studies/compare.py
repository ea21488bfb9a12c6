"""The comparison of objectives (``make compare``): tables and figure from the runs of studies/compare.sh.

    python -m studies.compare runs/study/compare --out studies/results/compare --figures figures/compare

Reads ``<root>/<arm>/seed<k>/`` for every arm and seed:

* generation: the evaluation lines of ``metrics.jsonl`` (FD and class accuracy of the fixed-noise EMA
  samples of each evaluation, ``studies/compare.sh``: 2,000 every 500 steps; the built-in evaluator);
* alignment: every checkpoint of the run's series (EMA weights) measured by
  ``train.run.live_align.LiveAlignment`` -- the function live alignment logs during training, on the
  same fixed probe set for every arm -- at the aligned block (REPA's ``model.encoder_depth``, the
  same block index for the arms without an encoder) against the default teacher.

Writes ``evals.csv`` (arm x seed x step), ``alignment.csv`` (arm x seed x step x metric x layer x t),
``summary.csv`` (arm x seed: final FD, class accuracy, steps to the seed's vanilla final FD and that
over vanilla's steps, final CKNNA and LDS), ``table.md`` (mean ± sd over seeds) and, with
``--figures``, ``compare_objectives.png`` (``probe.plots.objective_comparison``).  Each table's
JSON sidecar records the checkpoints, settings and code version.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from probe.summary import mean_sd, steps_to_reach
from train.run.config import TrainConfig
from train.data.latents import build_codec
from train.run.live_align import LiveAlignment
from train.run.loop import git_revision
from train.models.loading import load

ARMS = ("vanilla", "repa", "irepa", "haste", "sra", "dispersive", "reg")


def runs(root: Path) -> list[tuple[str, int, Path]]:
    found = [(d.parent.name, int(d.name[4:]), d) for d in sorted(root.glob("*/seed*")) if (d / "metrics.jsonl").exists()]
    order = {a: i for i, a in enumerate(ARMS)}
    return sorted(found, key=lambda r: (order.get(r[0], len(ARMS)), r[0], r[1]))


def evals(found) -> pd.DataFrame:
    rows = []
    for arm, seed, d in found:
        for line in (d / "metrics.jsonl").read_text().splitlines():
            rec = json.loads(line) if line.strip() else {}
            if "fd" in rec:
                rows.append({"arm": arm, "seed": seed, "step": rec["step"], "fd": rec["fd"], "class_acc": rec.get("class_acc"),
                             "eval_n": rec.get("eval_n")})
    return pd.DataFrame(rows)


def alignment(found, probe_cfg: TrainConfig) -> pd.DataFrame:
    """LiveAlignment of every checkpoint of every run, on one probe set (built from ``probe_cfg``)."""
    live = LiveAlignment(probe_cfg, build_codec("identity"), "cpu")
    rows = []
    for arm, seed, d in found:
        for ckpt in sorted((d / "checkpoints").glob("step_*.pt")):
            model = load(ckpt, weights="ema")
            step = int(ckpt.stem[5:])
            rec = live(model, step)
            for key, value in rec.items():
                parts = key.split("/")
                if len(parts) == 4:
                    rows.append({"arm": arm, "seed": seed, "step": step, "metric": parts[1], "layer": int(parts[2][5:]),
                                 "t": float(parts[3][1:]), "value": value, "checkpoint": str(ckpt)})
        print(f"alignment: {arm} seed {seed}", flush=True)
    return pd.DataFrame(rows)


def summary(ev: pd.DataFrame, al: pd.DataFrame, layer: int) -> pd.DataFrame:
    rows = []
    for (arm, seed), g in ev.groupby(["arm", "seed"], sort=False):
        g = g.sort_values("step")
        van = ev[(ev.arm == "vanilla") & (ev.seed == seed)].sort_values("step")
        target = van["fd"].iloc[-1] if len(van) else np.nan
        reach, bound = steps_to_reach(g["step"], g["fd"], target) if len(van) else (np.nan, "")
        last = al[(al.arm == arm) & (al.seed == seed)]
        last = last[last.step == last.step.max()]
        pick = lambda m, t: last[(last.metric == m) & (last.layer == layer) & (last.t == t)]["value"]  # noqa: E731
        rows.append({"arm": arm, "seed": seed, "last_step": int(g["step"].iloc[-1]), "final_fd": g["fd"].iloc[-1],
                     "min_fd": g["fd"].min(), "final_class_acc": g["class_acc"].iloc[-1], "vanilla_final_fd": target,
                     "steps_to_vanilla_fd": reach, "bound": bound,
                     "ratio": reach / van["step"].iloc[-1] if bound == "=" or bound == "<=" else np.nan,
                     "cknna_t0": pick("cknna", 0.0).mean(), "cknna_token_t0": pick("cknna_token", 0.0).mean(),
                     "lds_t0": pick("lds", 0.0).mean(), "linear_probe_t0": pick("linear_probe", 0.0).mean()})
    return pd.DataFrame(rows)


def table_md(s: pd.DataFrame, layer: int) -> str:
    head = ("| objective | FD at 2,000 | class accuracy | steps to vanilla's final FD / vanilla's (per seed) | "
            f"CKNNA, block {layer}, t = 0 | token CKNNA | LDS | linear probe |\n|---|---|---|---|---|---|---|---|\n")
    lines = []
    for arm, g in s.groupby("arm", sort=False):
        ratios = " / ".join("never" if b == ">" else (f"<= {r:.2f}" if b == "<=" else f"{r:.2f}") for r, b in zip(g["ratio"], g["bound"]))
        lines.append(f"| {arm} | {mean_sd(g['final_fd'], 1)} | {mean_sd(g['final_class_acc'], 3)} | {ratios} | "
                     f"{mean_sd(g['cknna_t0'])} | {mean_sd(g['cknna_token_t0'])} | {mean_sd(g['lds_t0'])} | {mean_sd(g['linear_probe_t0'])} |")
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path, nargs="?", default=Path("runs/study/compare"))
    ap.add_argument("--out", type=Path, default=Path("studies/results/compare"))
    ap.add_argument("--figures", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    found = runs(args.root)
    if not found:
        raise SystemExit(f"no runs under {args.root}: run studies/compare.sh first")
    base = TrainConfig.from_dict(json.loads((found[0][2] / "config.json").read_text())["config"])
    probe_cfg = TrainConfig.from_dict({**base.to_dict(), "align_every": 1, "align_encoder": "builtin-ssl", "align_layers": ()})
    layer = probe_cfg.model.encoder_depth
    args.out.mkdir(parents=True, exist_ok=True)
    ev, al = evals(found), alignment(found, probe_cfg)
    s = summary(ev, al, layer)
    ev.to_csv(args.out / "evals.csv", index=False)
    al.to_csv(args.out / "alignment.csv", index=False)
    s.to_csv(args.out / "summary.csv", index=False)
    (args.out / "table.md").write_text(table_md(s, layer))
    meta = {"runs": {f"{a}/seed{k}": str(d.resolve()) for a, k, d in found}, "configs": {
        f"{a}/seed{k}": json.loads((d / "config.json").read_text())["config"] for a, k, d in found},
        "alignment": {"layer": layer, "encoder": "builtin-ssl", "images": probe_cfg.align_images, "train_images": probe_cfg.align_train_images,
                      "token_samples": probe_cfg.align_token_samples, "ts": list(probe_cfg.align_ts), "seed": probe_cfg.align_seed,
                      "weights": "ema", "pooling": "mean (cknna, linear probe), tokens (cknna_token, lds)", "label": "null"},
        "code_version": git_revision()}
    (args.out / "provenance.json").write_text(json.dumps(meta, indent=2, default=str))
    print(table_md(s, layer))
    if args.figures:
        from probe.plots import objective_comparison

        objective_comparison(ev, al[al.layer == layer], args.figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
