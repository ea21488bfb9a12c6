"""Figures from the tables of ``probe.analyses`` only (filters, groupby and pivots; no measuring).

Each function writes ``<out>/<name>.png`` and ``.pdf`` and returns their paths:

* :func:`layer_curves` -- metric per layer, one line per noise level; for the linear probe each
  encoder's own accuracy is a dashed horizontal reference (REPA Fig. 2a/2b);
* :func:`heatmaps` -- layer x t grid per run and target;
* :func:`progress_curves` -- metric against training step, max over layers and chosen layers (Fig. 2c);
* :func:`compare_panels` -- runs side by side per noise level, e.g. REPA vs vanilla (Fig. 3);
* :func:`metric_figures` -- whichever of these the table supports for one metric; :func:`plot_all`
  -- for every metric;
* :func:`similarity_heatmap` -- layer x layer maps of a ``probe.similarity`` table (model A vs model B);
* :func:`token_pca` -- input images beside the RGB maps of ``probe.pca.token_pca``; :func:`token_pca_runs`
  -- several runs' maps side by side with the teacher's;
* :func:`patch_alignment` -- per-patch alignment heatmaps of ``probe.patch_alignment`` under the images;
* :func:`live_alignment` -- the live-alignment curves logged during training (``probe.summary.live_rows``);
* :func:`objective_comparison` -- objectives side by side: FD, class accuracy, CKNNA and LDS against step.

Tables holding several checkpoints of one run are drawn at each run's last step, except by
:func:`progress_curves`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from train.errors import UserError  # noqa: E402

METRIC_LABELS = {"cknna": "CKNNA", "cka": "linear CKA", "mutual_knn": "mutual k-NN", "linear_probe": "linear-probe accuracy",
                 "cknna_token": "token-level CKNNA", "lds": "LDS (local - distant cosine)", "cds": "CDS (cosine decay slope)",
                 "rmsc": "RMSC (RMS spatial contrast)"}
UNPAIRED = ("lds", "cds", "rmsc")  # spatial metrics describe the model alone: no target in the titles


def _label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def _save(fig: plt.Figure, out: str | os.PathLike, name: str) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    for path in paths:
        fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return paths


def _rows(df: pd.DataFrame, metric: str, target: str | None, last_step: bool = True) -> pd.DataFrame:
    """Non-reference rows of ``metric`` (and ``target``), at each run's last step unless told otherwise."""
    rows = df[(df["metric"] == metric) & ~df["is_reference"].astype(bool)]
    if target is not None:
        rows = rows[rows["target"] == target]
    if rows.empty:
        raise UserError(f"the table has no {metric} rows{f' for target {target}' if target else ''}: pick a metric/target it holds ({', '.join(sorted(df['metric'].unique()))})")
    if last_step and rows["step"].notna().any():
        rows = rows[rows["step"].fillna(-1) == rows.groupby("run")["step"].transform("max").fillna(-1)]
    return rows


def _integer_layers(grid: sns.FacetGrid) -> None:
    for ax in grid.axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _title(df: pd.DataFrame, what: str) -> str:
    first = df.iloc[0]
    seeds = df["seed_run"].nunique() if "seed_run" in df else 1
    spread = f"; mean and sd band over {seeds} training seeds" if seeds > 1 else ""
    return f"{what} -- {first['dataset']}, {first['n_images']} images, {first['pooling']} pooling, {first['label']} label{spread}"


def layer_curves(df: pd.DataFrame, out: str | os.PathLike, metric: str = "linear_probe", target: str | None = None) -> list[Path]:
    """Metric per layer, one line per t; columns: targets, rows: runs."""
    rows = _rows(df, metric, target)
    grid = sns.relplot(data=rows, x="layer", y="value", hue="t", col="target", row="run", kind="line", marker="o",
                       palette="viridis", height=3.2, aspect=1.3, facet_kws={"sharey": True}, errorbar="sd")
    refs = df[df["is_reference"].astype(bool) & (df["metric"] == metric)].groupby("target")["value"].mean()
    for ax in grid.axes.flat:
        for name, value in refs.items():
            ax.axhline(value, ls="--", color="grey", lw=1)
            ax.annotate(f"{name} itself", (1, value), xycoords=("axes fraction", "data"),
                        ha="right", va="bottom", fontsize=8, color="grey")
    _integer_layers(grid)
    grid.set_axis_labels("layer (output of block L)", _label(metric))
    grid.set_titles("{row_name}" if metric in ("linear_probe", *UNPAIRED) else "{row_name} vs {col_name}")
    grid.legend.set_title("noise level t")
    grid.figure.suptitle(_title(rows, f"{_label(metric)} per layer"), y=1.02)
    return _save(grid.figure, out, f"layers_{metric}")


def heatmaps(df: pd.DataFrame, out: str | os.PathLike, metric: str = "cknna", target: str | None = None) -> list[Path]:
    """Layer x t heatmap of ``metric``, one panel per run and target."""
    rows = _rows(df, metric, target)
    panels = list(rows.groupby(["run", "target"], sort=False))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 0.3 * rows["layer"].nunique() + 2.5),
                             squeeze=False, layout="constrained")
    for ax, ((run, tgt), group) in zip(axes[0], panels):
        table = group.pivot_table(index="layer", columns="t", values="value")
        sns.heatmap(table, ax=ax, annot=len(table) <= 30, fmt=".2f", cmap="viridis", vmin=rows["value"].min(),
                    vmax=rows["value"].max(), cbar_kws={"label": _label(metric)})
        ax.set(title=run if metric in UNPAIRED else f"{run} vs {tgt}", xlabel="noise level t", ylabel="layer")
    fig.suptitle(_title(rows, f"{_label(metric)}, layer x noise level"))
    return _save(fig, out, f"heatmap_{metric}")


def progress_curves(df: pd.DataFrame, out: str | os.PathLike, metric: str = "cknna", target: str | None = None,
                    layers: Sequence[int] = ()) -> list[Path]:
    """Metric against training step: max over layers, then each of ``layers``; one line per t and run."""
    rows = _rows(df, metric, target, last_step=False)
    keys = ["run", "step", "t", "target"] + (["seed_run"] if "seed_run" in rows else [])
    best = rows.groupby(keys, as_index=False)["value"].max().assign(panel="max over layers")
    chosen = [rows[rows["layer"] == layer][[*keys, "value"]].assign(panel=f"layer {layer}") for layer in layers]
    data = pd.concat([best, *chosen], ignore_index=True)
    grid = sns.relplot(data=data, x="step", y="value", hue="t", style="run", col="panel", row="target", kind="line",
                       marker="o", palette="viridis", height=3.2, aspect=1.3, errorbar="sd")
    grid.set_axis_labels("training step", _label(metric))
    grid.set_titles("{col_name}" if metric in UNPAIRED else "{col_name} ({row_name})")
    grid.figure.suptitle(_title(rows, f"{_label(metric)} over training"), y=1.02)
    return _save(grid.figure, out, f"progress_{metric}")


def compare_panels(df: pd.DataFrame, out: str | os.PathLike, metric: str = "cknna", target: str | None = None) -> list[Path]:
    """Runs side by side (e.g. REPA vs vanilla): metric per layer, one panel per t and target."""
    rows = _rows(df, metric, target)
    grid = sns.relplot(data=rows, x="layer", y="value", hue="run", col="t", row="target", kind="line", marker="o",
                       height=3.2, aspect=1.2, errorbar="sd")
    _integer_layers(grid)
    grid.set_axis_labels("layer (output of block L)", _label(metric))
    grid.set_titles("t = {col_name}" if metric in UNPAIRED else "t = {col_name} ({row_name})")
    grid.figure.suptitle(_title(rows, f"{_label(metric)}: " + " vs ".join(rows["run"].unique())), y=1.02)
    return _save(grid.figure, out, f"compare_{metric}")


def metric_figures(df: pd.DataFrame, out: str | os.PathLike, metric: str, layers: Sequence[int] = ()) -> list[Path]:
    """Every figure of one metric the table supports: layer curves and heatmaps, progress curves (with
    ``layers`` besides the max over layers) when a run has several steps, comparison panels when
    there are several runs."""
    measured = df[~df["is_reference"].astype(bool)]
    paths = layer_curves(df, out, metric) + heatmaps(df, out, metric)
    if measured.groupby("run")["step"].nunique().max() > 1:
        paths += progress_curves(df, out, metric, layers=layers)
    if measured["run"].nunique() > 1:
        paths += compare_panels(df, out, metric)
    return paths


# the columns the figures are drawn from (plot_all refuses a table without them, or without measured rows)
TABLE_COLUMNS = ["run", "step", "layer", "t", "metric", "target", "value", "is_reference"]


def check_table(df: pd.DataFrame, path: str | os.PathLike) -> pd.DataFrame:
    """``df`` if it holds :data:`TABLE_COLUMNS` and measured rows, else a one-line UserError naming
    what is missing and the commands that write a proper table."""
    from probe.analyses import WRITES_TABLES

    missing = [c for c in TABLE_COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"table {path} lacks the column(s) {', '.join(missing)} of a repa-probe table: {WRITES_TABLES}")
    if not (~df["is_reference"].astype(str).str.lower().isin(("true", "1"))).any():
        raise UserError(f"table {path} holds no measured rows (only reference rows or none): {WRITES_TABLES}")
    return df


def plot_all(df: pd.DataFrame, out: str | os.PathLike, layers: Sequence[int] = ()) -> list[Path]:
    """:func:`metric_figures` for every metric of the table."""
    measured = df[~df["is_reference"].astype(bool)]
    return [p for metric in measured["metric"].unique() for p in metric_figures(df, out, metric, layers)]


def curve_panels(metrics: pd.DataFrame, conditional: bool = True) -> list[str]:
    """The columns :func:`training_curves` draws: those logged of denoising loss, projection loss, FD, class
    accuracy (only for ``conditional`` runs: an unconditional model ignores the label asked for, so its class
    accuracy is chance whatever it draws) and the evaluator's mean confidence."""
    wanted = ("denoise_loss", "proj_loss", "fd", *(("class_acc",) if conditional else ()), "class_confidence")
    return [c for c in wanted if c in metrics and metrics[c].notna().any()]


def training_curves(metrics: pd.DataFrame, out: str | os.PathLike, conditional: bool = True) -> list[Path]:
    """From training logs (metrics.jsonl rows with ``run`` and ``seed`` columns): denoising loss,
    projection loss and, where evaluated, Fréchet distance, class accuracy (of conditional samples: the
    label asked for; left out for unconditional runs, ``conditional=False``) and the evaluator's mean
    confidence (recognisability, with or without labels) against step."""
    panels = curve_panels(metrics, conditional)
    labels = {"denoise_loss": "denoising loss", "proj_loss": "projection loss (-cos)", "fd": "Fréchet distance (evaluator)",
              "class_acc": "class accuracy of samples (label asked for)", "class_confidence": "evaluator's mean confidence"}
    long = metrics.melt(id_vars=["run", "seed", "step"], value_vars=panels, var_name="panel").dropna(subset=["value"])
    long = long[~((long["panel"] == "proj_loss") & (long["run"] == "vanilla"))]
    # a dash pattern per run as well as a colour: where the runs' curves coincide (the denoising loss),
    # the one drawn last does not hide the others
    grid = sns.relplot(data=long, x="step", y="value", hue="run", style="run", col="panel", col_wrap=2, kind="line",
                       marker=".", facet_kws={"sharey": False}, height=3.0, aspect=1.4, errorbar=("pi", 100))
    for ax, panel in zip(grid.axes.flat, panels):
        ax.set_title(labels[panel])
        ax.set_ylabel("")
        if panel == "fd":
            ax.set_yscale("log")
        if panel in ("denoise_loss", "proj_loss"):  # logged every few steps: lines only, dots would cover them
            for line in ax.get_lines():
                line.set_marker("")
    grid.figure.suptitle(f"Training, REPA vs vanilla ({metrics['seed'].nunique()} seed(s); band: min-max over seeds)", y=1.02)
    return _save(grid.figure, out, "training_curves")


def live_alignment(rows: pd.DataFrame, out: str | os.PathLike, name: str = "live_alignment") -> list[Path]:
    """Live alignment against training step (a ``probe.summary.live_rows`` table): one panel per metric
    (columns) and noise level (rows), one line per run and layer; band: min-max over seeds."""
    if rows.empty:
        raise UserError("no live-alignment values in these logs: train with --set align_every=N (e.g. 100)")
    rows = rows.assign(line=rows["run"] + ", block " + rows["layer"].astype(str))
    grid = sns.relplot(data=rows, x="step", y="value", hue="line", col="metric", row="t", kind="line", marker=".",
                       facet_kws={"sharey": False}, height=2.6, aspect=1.3, errorbar=("pi", 100))
    for (t, metric), ax in grid.axes_dict.items():
        ax.set_title(f"{_label(metric)}, t = {t:g}", fontsize=9)
        ax.set_ylabel("")
    grid.figure.suptitle(f"Live alignment during training, EMA weights ({rows['seed'].nunique()} seed(s); band: min-max over seeds)", y=1.02)
    return _save(grid.figure, out, name)


def objective_comparison(evals: pd.DataFrame, alignment: pd.DataFrame, out: str | os.PathLike,
                         name: str = "compare_objectives", t: float = 0.0) -> list[Path]:
    """Objectives side by side (``studies.compare`` tables): FD and class accuracy of samples (``evals``:
    arm, seed, step, fd, class_acc) and, at noise level ``t``, CKNNA and LDS of the aligned block
    (``alignment``: arm, seed, step, metric, t, value) against step; band: min-max over seeds."""
    gen = evals.melt(id_vars=["arm", "seed", "step"], value_vars=["fd", "class_acc"], var_name="panel")
    al = alignment[(alignment["t"] == t) & alignment["metric"].isin(["cknna", "lds"])].rename(columns={"metric": "panel"})
    long = pd.concat([gen, al[["arm", "seed", "step", "panel", "value"]]], ignore_index=True)
    titles = {"fd": "Fréchet distance (evaluator, log)", "class_acc": "class accuracy of samples",
              "cknna": f"CKNNA with the teacher, aligned block, t = {t:g}", "lds": f"LDS of the aligned block, t = {t:g}"}
    grid = sns.relplot(data=long, x="step", y="value", hue="arm", col="panel", col_wrap=2, col_order=list(titles), kind="line",
                       marker=".", facet_kws={"sharey": False, "sharex": False}, height=3.0, aspect=1.5, errorbar=("pi", 100))
    for panel, ax in grid.axes_dict.items():
        ax.set_title(titles[panel], fontsize=10)
        ax.set_ylabel("")
        if panel == "fd":
            ax.set_yscale("log")
    grid.figure.suptitle(f"Objectives on the built-in default ({evals['seed'].nunique()} seeds; band: min-max over seeds)", y=1.02)
    return _save(grid.figure, out, name)


def sample_grids(grids: dict[str, list[str | os.PathLike]], out: str | os.PathLike) -> list[Path]:
    """The runs' sample grids (PNG files written during training, one per sampled step) side by side: a
    column per run, a row per step that every run has a grid of."""
    grids = {run: {Path(p).stem: p for p in paths if Path(p).is_file()} for run, paths in grids.items()}
    steps = [s for s in next(iter(grids.values()), {}) if all(s in g for g in grids.values())]
    if not steps:
        return []
    images = {(run, s): plt.imread(g[s]) for run, g in grids.items() for s in steps}
    aspect = max(im.shape[0] / im.shape[1] for im in images.values())
    fig, axes = plt.subplots(len(steps), len(grids), figsize=(4.2 * len(grids), (4.2 * aspect + 0.4) * len(steps) + 0.5),
                             squeeze=False)
    for i, s in enumerate(steps):
        for ax, run in zip(axes[i], grids):
            ax.imshow(images[run, s])
            ax.set_title(f"{run}: step {int(s.rsplit('_', 1)[-1]):,}")  # grids are named step_0000500.png
            ax.axis("off")
    fig.suptitle("EMA samples, the same noise and labels for every run (column j asks for class j; "
                 "an unconditional model is given the null class)")
    return _save(fig, out, "samples")


def similarity_heatmap(df: pd.DataFrame, out: str | os.PathLike, name: str = "similarity") -> list[Path]:
    """Layer x layer heatmaps of a ``probe.similarity.model_similarity`` table, one panel per model
    pair, noise level and metric (rows: model A's layers, columns: model B's)."""
    if df.empty or not {"layer_a", "layer_b", "metric", "value"} <= set(df.columns):
        raise UserError("the table holds no layer_a x layer_b rows: pass a table written by probe.similarity.model_similarity")
    panels = list(df.groupby(["run_a", "run_b", "t", "metric"], sort=False))
    n_a, n_b = df["layer_a"].nunique(), df["layer_b"].nunique()
    cols = min(len(panels), 4)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(0.45 * n_b * cols + 2.5 * cols, 0.4 * n_a * rows + 2.0 * rows),
                             squeeze=False, layout="constrained")
    for ax, ((run_a, run_b, t, metric), group) in zip(axes.flat, panels):
        table = group.pivot_table(index="layer_a", columns="layer_b", values="value")
        sns.heatmap(table, ax=ax, annot=table.size <= 200, fmt=".2f", cmap="viridis", vmin=min(0.0, df["value"].min()), vmax=1, square=True,
                    cbar_kws={"label": _label(metric)})
        ax.invert_yaxis()
        ax.set(title=f"{_label(metric)}, t = {t:g}", xlabel=f"{run_b} layer", ylabel=f"{run_a} layer")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    first = df.iloc[0]
    fig.suptitle(f"{first['run_a']} vs {first['run_b']} -- {first['dataset']}, {first['n_images']} images, "
                 f"{first['pooling']} pooling, same images and noise")
    return _save(fig, out, name)


def _rgb_grid(n: int, columns: list, title: str, out: str | os.PathLike, name: str, cell: float) -> list[Path]:
    """Rows of ``n`` images x ``columns`` (``(title, image_of_row)`` pairs, each image ``(3, g, g)`` in [0, 1])."""
    fig, axes = plt.subplots(n, len(columns), figsize=(cell * len(columns), cell * n + 0.7), squeeze=False)
    for i in range(n):
        for j, (col_title, image_of) in enumerate(columns):
            ax = axes[i, j]
            ax.imshow(image_of(i).transpose(1, 2, 0), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(col_title, fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(fig, out, name)


def token_pca(result, out: str | os.PathLike, name: str = "token_pca", max_images: int = 8) -> list[Path]:
    """The shown images (rows, at most ``max_images``) beside their token PCA maps (columns: the
    model's layer x t maps, then each encoder's) from a ``probe.pca.TokenPCA``; draws only."""
    columns = [("input", lambda i: result.images[i])]
    columns += [(f"layer {layer}, t={t:g}", lambda i, li=li, ti=ti: result.maps[li, ti, i])
                for li, layer in enumerate(result.layers) for ti, t in enumerate(result.ts)]
    columns += [(enc, lambda i, enc=enc: result.encoder_maps[enc][i]) for enc in result.encoder_maps]
    prov = result.provenance
    title = (f"Token PCA (components 1-3 as RGB) -- {prov.get('run')} step {prov.get('step')}, {prov.get('dataset')}, "
             f"fitted on {prov.get('n_fit')} images, {prov.get('label')} label")
    return _rgb_grid(min(len(result.images), max_images), columns, title, out, name, 1.3)


def token_pca_runs(results: dict, out: str | os.PathLike, name: str = "token_pca_runs", max_images: int = 6) -> list[Path]:
    """Several runs' token PCA maps side by side (e.g. REPA and vanilla) from ``probe.pca.TokenPCA``
    results on the same images: rows are images; columns the input, each encoder map of the first
    result (the teacher), then every run's layer x t maps; draws only."""
    first = next(iter(results.values()))
    if any(r.indices.tolist() != first.indices.tolist() for r in results.values()):
        raise UserError("the token PCA results show different images: compute them on the same image set")
    columns = [("input", lambda i: first.images[i])]
    columns += [(f"teacher ({enc})", lambda i, enc=enc: first.encoder_maps[enc][i]) for enc in first.encoder_maps]
    columns += [(f"{run}\nlayer {layer}, t={t:g}", lambda i, r=r, li=li, ti=ti: r.maps[li, ti, i]) for run, r in results.items()
                for li, layer in enumerate(r.layers) for ti, t in enumerate(r.ts)]
    prov = first.provenance
    title = (f"Token PCA (components 1-3 as RGB; each map's own PCA) -- {' vs '.join(results)}, step {prov.get('step')}, "
             f"{prov.get('dataset')}, fitted on {prov.get('n_fit')} images, {prov.get('label')} label")
    return _rgb_grid(min(len(first.images), max_images), columns, title, out, name, 1.25)


def patch_alignment(results, out: str | os.PathLike, name: str = "patch_alignment", max_images: int = 8) -> list[Path]:
    """Per-patch alignment maps (``probe.patch_alignment.PatchAlignment``, or ``{run: result}`` on
    the same images): the images in the first row, then one row of heatmaps per run and panel
    (method, layer, t), titled with the panel's mean from the result; one colour scale.  Draws only."""
    results = results if isinstance(results, dict) else {results.provenance.get("run", "model"): results}
    first = next(iter(results.values()))
    if any(r.indices.tolist() != first.indices.tolist() for r in results.values()):
        raise UserError("the patch-alignment results show different images: compute them on the same image set")
    rows = [(run, i, p) for run, r in results.items() for i, p in enumerate(r.panels)]
    if not rows:
        raise UserError("the patch-alignment results hold no maps: pass results computed with a method")
    n = min(len(first.images), max_images)
    fig, axes = plt.subplots(len(rows) + 1, n, figsize=(1.2 * n + 1.6, 1.2 * (len(rows) + 1) + 0.8), squeeze=False,
                             layout="constrained")
    lo = min(float(r.maps.min()) for r in results.values())
    for j in range(n):
        axes[0, j].imshow(first.images[j].transpose(1, 2, 0), interpolation="nearest")
    for k, (run, i, p) in enumerate(rows, start=1):
        for j in range(n):
            im = axes[k, j].imshow(results[run].maps[i, j], vmin=min(lo, 0.0), vmax=1.0, cmap="viridis", interpolation="nearest")
        axes[k, 0].set_ylabel(f"{run}\n{p['method']} L{p['layer']}\nt={p['t']:g}: {p['value']:.2f}", fontsize=7, rotation=0,
                              ha="right", va="center")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[1:, :].ravel().tolist(), shrink=0.8, label="cos(prediction, teacher token)")
    prov = first.provenance
    fig.suptitle(f"Per-patch alignment with {prov.get('target')} -- {prov.get('dataset')}, {prov.get('label')} label; "
                 f"ridge fitted on {prov.get('n_fit')} held-out images (row label: the mean)", fontsize=9)
    return _save(fig, out, name)
