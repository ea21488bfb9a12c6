"""Seed-aggregated summaries of a REPA-vs-vanilla study (the tables behind ``RESULTS.md``).

Pure pandas functions of the two tables the main job writes:

* ``probe``: :func:`probe.analyses.training_progress` rows of every checkpoint of both runs and
  every seed (``seed_run`` = the training seed);
* ``metrics``: every run's ``metrics.jsonl`` stacked, with ``run`` and ``seed`` columns; the
  evaluation rows carry ``fd`` (Fréchet distance in the evaluator's feature space).

Spread is the sample standard deviation over seeds (``ddof=1``); REPA-minus-vanilla differences
are paired by seed (same seed: same initialisation, data order and noise).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

RUNS = ("vanilla", "repa")


def _rows(probe: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Non-reference rows of one metric, block outputs only (layer 0 is the patch embedding)."""
    p = probe[~probe["is_reference"].astype(bool) & (probe["metric"] == metric) & (probe["layer"] > 0)]
    return p.assign(step=p["step"].astype(int), layer=p["layer"].astype(int))


def mean_sd(values, digits: int = 3) -> str:
    """``mean ± sd`` over seeds (sd with ddof=1; just the mean for one seed)."""
    v = np.asarray(list(values), dtype=float)
    if len(v) < 2:
        return f"{v.mean():.{digits}f}" if len(v) else "n/a"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def final_rows(probe: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One metric at the last checkpoint of each (run, seed): columns run, seed_run, t, layer, value."""
    p = _rows(probe, metric)
    last = p["step"] == p.groupby(["run", "seed_run"])["step"].transform("max")
    return p[last][["run", "seed_run", "step", "t", "layer", "value"]]


def peak_layers(probe: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per (run, seed, t) at the final checkpoint: the best layer, its value, and whether it is interior
    (neither the first nor the last block)."""
    f = final_rows(probe, metric)
    depth = int(f["layer"].max())
    best = f.loc[f.groupby(["run", "seed_run", "t"])["value"].idxmax()]
    return best.assign(interior=(best["layer"] > 1) & (best["layer"] < depth))


def repa_gain(probe: pd.DataFrame, metric: str) -> pd.DataFrame:
    """REPA minus vanilla at every (seed, t, layer) of the final checkpoints, paired by seed."""
    f = final_rows(probe, metric).drop(columns="step")
    wide = f.pivot_table(index=["seed_run", "t", "layer"], columns="run", values="value").reset_index()
    return wide.assign(gain=wide["repa"] - wide["vanilla"])


def progress_rows(probe: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Max over layers of a metric per (run, seed, t, step): the alignment-vs-iteration curve (Fig. 3)."""
    p = _rows(probe, metric)
    return p.groupby(["run", "seed_run", "t", "step"], as_index=False)["value"].max()


def live_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    """Live-alignment rows (``train.run.live_align``: ``align/<metric>/layer<L>/t<t>`` columns of the
    stacked metrics.jsonl) as a tidy table: run, seed, step, metric, layer, t, value (empty when the
    runs were trained with ``align_every=0``)."""
    cols = [c for c in metrics.columns if c.startswith("align/") and c.count("/") == 3]
    if not cols:
        return pd.DataFrame(columns=["run", "seed", "step", "metric", "layer", "t", "value"])
    long = metrics.melt(id_vars=["run", "seed", "step"], value_vars=cols, var_name="key").dropna(subset=["value"])
    parts = long["key"].str.split("/", expand=True)
    return (long.assign(metric=parts[1], layer=parts[2].str.removeprefix("layer").astype(int),
                        t=parts[3].str.removeprefix("t").astype(float), step=long["step"].astype(int))
            [["run", "seed", "step", "metric", "layer", "t", "value"]].reset_index(drop=True))


def fd_curves(metrics: pd.DataFrame) -> pd.DataFrame:
    """Evaluation rows (run, seed, step, fd, class_acc, and where logged kid, the halves' FD and the
    evaluator's mean confidence: what says whether an unconditional model's samples are recognisable)."""
    ev = metrics.dropna(subset=["fd"]) if "fd" in metrics else metrics.iloc[0:0]
    cols = ["run", "seed", "step", "fd", "class_acc"] + [c for c in ("kid", "fd_half_a", "fd_half_b", "class_confidence") if c in ev]
    return ev[cols].assign(step=lambda d: d["step"].astype(int))


def steps_to_reach(steps, fds, target: float) -> tuple[float, str]:
    """First step at which the FD curve ``(steps, fds)`` reaches ``target`` (FD <= target).

    Between evaluations the curve is interpolated linearly in log FD.  Returns ``(step, bound)``:
    ``bound`` is ``"="`` for an interpolated crossing, ``"<="`` when the first evaluation is already
    there (it may have got there earlier), ``">"`` with the last step when it never gets there.
    """
    s, f = np.asarray(steps, dtype=float), np.log(np.asarray(fds, dtype=float))
    goal = math.log(target)
    for i in range(len(s)):
        if f[i] <= goal:
            if i == 0:
                return float(s[0]), "<="
            w = (f[i - 1] - goal) / (f[i - 1] - f[i])
            return float(s[i - 1] + w * (s[i] - s[i - 1])), "="
    return float(s[-1]), ">"


def speedup(metrics: pd.DataFrame) -> pd.DataFrame:
    """The analogue of the paper's 17.5x: for each seed and REPA evaluation step ``s``, the step at
    which vanilla (same seed) first reaches REPA's FD at ``s``, and the ratio ``vanilla_step / s``."""
    ev = fd_curves(metrics)
    rows = []
    for seed, g in ev.groupby("seed"):
        van = g[g["run"] == "vanilla"].sort_values("step")
        for _, r in g[g["run"] == "repa"].sort_values("step").iterrows():
            v, bound = steps_to_reach(van["step"], van["fd"], r["fd"])
            rows.append({"seed": seed, "repa_step": int(r["step"]), "repa_fd": r["fd"], "vanilla_step": v,
                         "bound": bound, "ratio": v / r["step"]})
    return pd.DataFrame(rows)


def _bounded(v: float, bound: str, fmt: str) -> str:
    return ("" if bound == "=" else bound.replace("<=", "≤ ") + ("" if bound == "<=" else " ")) + format(v, fmt)


def _card_line(card: dict) -> str:
    """One line from a shipped teacher's card: its test-set measures and compute."""
    m = card["measures"]
    return (f"Shipped teacher {card.get('name', '')} ({card.get('config', {}).get('kind', '')}): test-set "
            f"linear probe {m['linear_probe_accuracy']:.4f}, k-NN {m['knn_accuracy']:.4f}, LDS {m['lds']:.3f}, class R^2 "
            f"{m['class_r2']:.3f}; compute {card['compute']['ratio_to_demo_student']:g}x one demo student (its card).")


def results_markdown(probe: pd.DataFrame, metrics: pd.DataFrame, teacher: dict, align_depth: int,
                     projection: pd.DataFrame | None = None, teachers: pd.DataFrame | None = None,
                     more_teachers: list[dict] | None = None) -> str:
    """The results tables (markdown): every number is a mean ± sd over the seeds in the tables.
    ``projection``: :func:`probe.analyses.projection_alignment` rows of the final REPA checkpoints
    (with ``seed_run``), if measured; ``teachers``: with several teachers, the aligned block's CKNNA of
    every run's last checkpoint against each (``probe.demo.task_teachers``), and ``more_teachers`` the
    cards of the teachers after the first."""
    seeds = sorted(probe["seed_run"].dropna().unique().astype(int))
    out = [f"Seeds: {', '.join(map(str, seeds))} (mean ± sd over seeds; sd with ddof=1). Aligned layer: {align_depth}.", ""]

    ref = probe[probe["is_reference"].astype(bool) & (probe["metric"] == "linear_probe")]
    if len(ref):
        out += [f"Teacher's own linear probe on the probe images (mean-pooled tokens): {mean_sd(ref['value'])}.", ""]

    out += ["### Final checkpoint: alignment and linear probes by noise level", "",
            "| metric | t | run | at layer %d | best over layers | best layer (per seed) | interior peak |" % align_depth,
            "|---|---|---|---|---|---|---|"]
    for metric in ("cknna", "linear_probe"):
        f, peaks = final_rows(probe, metric), peak_layers(probe, metric)
        for t in sorted(f["t"].unique()):
            for run in RUNS:
                at = f[(f["run"] == run) & (f["t"] == t) & (f["layer"] == align_depth)]["value"]
                pk = peaks[(peaks["run"] == run) & (peaks["t"] == t)].sort_values("seed_run")
                out.append(f"| {metric} | {t:g} | {run} | {mean_sd(at)} | {mean_sd(pk['value'])} | "
                           f"{', '.join(str(int(x)) for x in pk['layer'])} | {int(pk['interior'].sum())}/{len(pk)} |")

    out += ["", "### REPA minus vanilla at the final checkpoint (paired by seed)", "",
            "| metric | t | " + " | ".join(f"layer {l}" for l in sorted(final_rows(probe, "cknna")["layer"].unique())) + " |",
            "|---|---|" + "---|" * final_rows(probe, "cknna")["layer"].nunique()]
    for metric in ("cknna", "linear_probe"):
        g = repa_gain(probe, metric)
        for t in sorted(g["t"].unique()):
            cells = [mean_sd(g[(g["t"] == t) & (g["layer"] == l)]["gain"]) for l in sorted(g["layer"].unique())]
            out.append(f"| {metric} | {t:g} | " + " | ".join(cells) + " |")

    out += ["", "### Alignment over training: max over layers (t = 0)", "",
            "| step | CKNNA vanilla | CKNNA repa | linear probe vanilla | linear probe repa |", "|---|---|---|---|---|"]
    pr = {metric: progress_rows(probe, metric) for metric in ("cknna", "linear_probe")}
    pr = {metric: rows[rows["t"] == rows["t"].min()] for metric, rows in pr.items()}
    for step in sorted(pr["cknna"]["step"].unique()):
        cells = [mean_sd(rows[(rows["run"] == run) & (rows["step"] == step)]["value"]) for rows in pr.values() for run in RUNS]
        out.append(f"| {step} | " + " | ".join(cells) + " |")

    ev = fd_curves(metrics)
    runs = [r for r in (*RUNS, "control") if r in set(ev["run"])]  # the control arm when the study trained one
    kid = "kid" in ev and ev["kid"].notna().any()
    noise = "fd_half_a" in ev and ev["fd_half_a"].notna().any()
    conf = "class_confidence" in ev and ev["class_confidence"].notna().any()
    heads = ([f"FD {r}" for r in runs] + ([f"KID x 1000 {r}" for r in runs] if kid else [])
             + [f"class accuracy {r}" for r in runs] + ([f"evaluator confidence {r}" for r in runs] if conf else [])
             + (["FD noise: halves differ by"] if noise else []))
    out += ["", "### Generation over training: FD, KID and class accuracy of samples", "",
            "| step | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
    for step in sorted(ev["step"].unique()):
        e = ev[ev["step"] == step]
        cells = ([mean_sd(e[e["run"] == run]["fd"], 1) for run in runs]
                 + ([mean_sd(1000 * e[e["run"] == run]["kid"], 2) for run in runs] if kid else [])
                 + [mean_sd(e[e["run"] == run]["class_acc"]) for run in runs]
                 + ([mean_sd(e[e["run"] == run]["class_confidence"]) for run in runs] if conf else [])
                 + ([mean_sd((e["fd_half_a"] - e["fd_half_b"]).abs(), 2)] if noise else []))
        out.append(f"| {step} | " + " | ".join(cells) + " |")
    if conf:
        out += ["", "Class accuracy is the evaluator's agreement with the label the sample was asked for (an "
                "unconditional model is given the null class, so its accuracy is chance); the evaluator's mean "
                "confidence in its own prediction says whether the samples are recognisable either way."]
    if noise:
        out += ["", "FD noise: |FD of the first half - FD of the second half| of each evaluation's samples (all runs, "
                "mean ± sd): the spread of one estimate at half the sample count."]

    sp = speedup(metrics)
    if len(sp):
        out += ["", "### Steps vanilla needs to reach REPA's FD (the analogue of the paper's 17.5x)", "",
                "| REPA step | REPA FD | vanilla steps to reach it (per seed) | ratio (per seed) |", "|---|---|---|---|"]
        for step, g in sp.groupby("repa_step"):
            g = g.sort_values("seed")
            out.append(f"| {step} | {mean_sd(g['repa_fd'], 1)} | "
                       + ", ".join(_bounded(v, b, ".0f") for v, b in zip(g["vanilla_step"], g["bound"])) + " | "
                       + ", ".join(_bounded(r, b, ".2f") for r, b in zip(g["ratio"], g["bound"])) + " |")
        out += ["", "Between evaluations the vanilla FD curve is interpolated linearly in log FD; \"> N\": vanilla "
                "did not reach that FD within its N steps; \"≤ N\": it was already there at its first evaluation."]

    if projection is not None and len(projection):
        out += ["", "### REPA's projected tokens vs the teacher's: cosine with the real and the null label (final checkpoint)", "",
                "| weights | t | real label | null label |", "|---|---|---|---|"]
        for (w, t), g in projection[projection["weights"] != "baseline"].groupby(["weights", "t"]):
            cells = [mean_sd(g[g["label"] == label]["value"]) for label in ("real", "null")]
            out.append(f"| {w} | {t:g} | " + " | ".join(cells) + " |")
        blind = projection[projection["weights"] == "baseline"]
        if len(blind):
            cells = [mean_sd(blind[blind["label"] == label]["value"]) for label in ("real", "null")]
            out.append(f"| image-blind baseline | - | {cells[0]} (class-mean token) | {cells[1]} (mean token) |")

    if teachers is not None and len(teachers):
        t = teachers[~teachers["is_reference"].astype(bool)] if "is_reference" in teachers else teachers
        runs = list(dict.fromkeys(t["run"]))
        out += ["", f"### The aligned layer {align_depth} against every teacher (final checkpoint, t = 0, null label, mean pooling)", "",
                "| teacher | " + " | ".join(f"CKNNA {r}" for r in runs) + " | REPA / vanilla (per seed) |",
                "|---|" + "---|" * len(runs) + "---|"]
        for target, g in t.groupby("target", sort=False):
            by = {r: g[g["run"] == r].sort_values("seed_run") for r in runs}
            ratio = ", ".join(f"{a / b:.2f}" for a, b in zip(by["repa"]["value"], by["vanilla"]["value"])) if {"repa", "vanilla"} <= set(by) else "-"
            out.append(f"| {target} | " + " | ".join(mean_sd(by[r]["value"]) for r in runs) + f" | {ratio} |")

    for card in [teacher, *(more_teachers or [])]:
        if "measures" in card:
            out += ["", _card_line(card)]
    if "measures" not in teacher and "linear_probe_accuracy" in teacher:
        kind = teacher.get("config", {}).get("kind", "supervised")
        head = f", classifier accuracy {teacher['val_accuracy']:.4f}" if "val_accuracy" in teacher else ""
        out += ["", f"Built-in teacher {teacher.get('name', '')} ({kind}): held-out linear-probe accuracy "
                f"{teacher['linear_probe_accuracy']:.4f}{head} (teacher sidecar)."]
    return "\n".join(out)
