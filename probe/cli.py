"""``repa-probe`` (also ``python -m probe``): ``sweep | progress | compare | plot | pca | patch-align | similarity``.

Each analysis writes ``<out>/<analysis>.{parquet,csv,json}`` and, unless ``--no-plot``, figures in
``<out>/figures``; extracted features are kept in ``<out>/store`` (``--store``), so running the same
command again resumes.  Bad input ends in one line on stderr (``error: what is wrong: the fix``)
and exit status 2.  The same analyses are ``probe.analyses.layer_sweep / training_progress / compare``;
``pca`` writes token PCA maps (``probe.pca.token_pca``): ``<out>/token_pca.{npz,csv,json}`` and
``<out>/figures/token_pca.{png,pdf}``; ``patch-align`` per-patch alignment maps
(``probe.patch_alignment.patch_alignment``) of one or more checkpoints on the same images:
``<out>/patch_alignment.csv`` (+ ``.json``), ``<out>/patch_alignment_<run>.npz`` and
``<out>/figures/patch_alignment.{png,pdf}``; ``similarity`` every layer of CKPT_A against every layer
of CKPT_B (``probe.similarity.model_similarity``): ``<out>/similarity.{parquet,csv,json}`` and
``<out>/figures/similarity.{png,pdf}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import pandas as pd

from probe import analyses, plots
from probe.analyses import METRICS, ProbeConfig
from probe.extract import DEFAULT_TS, LABELS, POOLINGS
from probe.linear import METHODS
from train.errors import UserError
from train.run.rules import Parser, option


_Parser = Parser  # argparse whose usage errors are one line and exit 2 (train.run.rules)


def _layers(values: list[str]) -> str | list[int]:
    if values == ["all"]:
        return "all"
    try:
        return [int(v) for v in values]
    except ValueError:
        raise UserError(f"--layers {' '.join(map(str, values))} is not valid: pass 'all' or layer numbers, e.g. --layers 2 4 6") from None


def _named(pairs: list[str]) -> dict[str, Path]:
    if not all("=" in p for p in pairs):
        raise UserError("--checkpoints for compare takes NAME=PATH pairs: e.g. --checkpoints REPA=a.pt vanilla=b.pt")
    return {name: Path(path) for name, path in (p.split("=", 1) for p in pairs)}


def build_parser() -> argparse.ArgumentParser:
    d = ProbeConfig()
    common = _Parser(add_help=False)
    g = common.add_argument_group("images")
    g.add_argument("--dataset", default=d.dataset, help="fashion-mnist, scenes, shapes, digits or folder (default: the checkpoint's own)")
    g.add_argument("--data-root", type=option("image_root", str), help="image folder root for --dataset folder")
    g.add_argument("--image-size", type=option("image_size"), help="default: the model's input size x the codec's downsampling")
    g.add_argument("--split", default=d.split, help="evaluation split (default: %(default)s)")
    g.add_argument("--train-split", default=d.train_split, help="linear-probe training split (default: %(default)s)")
    g.add_argument("--n-images", type=option("n_images"), default=d.n_images, help="evaluation images (default: %(default)s)")
    g.add_argument("--n-train", type=option("n_train"), default=d.n_train, help="linear-probe training images; 0 skips probes (default: %(default)s)")
    g.add_argument("--codec", default=d.codec, help="identity, grey or sd-vae (default: the checkpoint's own)")
    g = common.add_argument_group("targets")
    g.add_argument("--encoders", nargs="+", default=None, help="target encoders (default: the checkpoint's own)")
    g.add_argument("--encoder-weights", nargs="+", type=option("encoder_weights", str), default=[], help="one local weights path per encoder ('' for the default)")
    g.add_argument("--random-init-encoder", action="store_true", help="random encoder weights (offline demos)")
    g = common.add_argument_group("measurement")
    g.add_argument("--t", nargs="+", type=option("t"), default=list(DEFAULT_TS), help="noise levels in REPA time, 0 = clean (default: 0 0.25 0.5)")
    g.add_argument("--layers", nargs="+", type=option("layers"), default=["all"], help="'all' (0..depth) or layer numbers")
    g.add_argument("--metrics", nargs="+", default=list(d.metrics), choices=METRICS,
                   help="default: %(default)s; opt-in: cknna_token (patch tokens as samples), lds, cds, rmsc (iREPA's spatial metrics)")
    g.add_argument("--token-samples", type=option("token_samples"), default=d.token_samples, help="(image, token) pairs for cknna_token (default: %(default)s)")
    g.add_argument("--r-near", type=option("r_near"), default=d.r_near, help="lds: near pairs at Manhattan distance 1..R (default: %(default)s)")
    g.add_argument("--r-far", type=option("r_far"), default=d.r_far, help="lds: far pairs at distance >= R (default: iREPA's 6 on 16x16, scaled to the grid)")
    g.add_argument("--k", type=option("k"), default=d.k, help="neighbours for CKNNA / mutual k-NN (default: %(default)s)")
    g.add_argument("--cknna-mode", default=d.cknna_mode, choices=["reference", "exact"])
    g.add_argument("--q", type=option("q"), default=d.q, help="outlier clipping quantile; 1 disables (default: %(default)s)")
    g.add_argument("--no-normalize", action="store_true", help="skip L2 normalisation before the metrics")
    g.add_argument("--pooling", default=d.pooling, choices=POOLINGS)
    g.add_argument("--label", default=d.label, choices=LABELS, help="class label fed to the model (default: null)")
    g.add_argument("--seed", type=option("seed"), default=d.seed)
    g.add_argument("--weights", default=d.weights, choices=["ema", "model"], help="which weights of training checkpoints")
    g.add_argument("--probe-method", default=d.probe_method, choices=METHODS)
    g.add_argument("--probe-epochs", type=option("probe_epochs"), default=d.probe_epochs)
    g.add_argument("--probe-batch-size", type=option("batch_size"), default=d.probe_batch_size)
    g.add_argument("--probe-lr", type=option("probe_lr"), default=d.probe_lr)
    g = common.add_argument_group("running")
    g.add_argument("--batch-size", type=option("batch_size"), default=d.batch_size)
    g.add_argument("--device", type=option("device"), default=d.device)
    g.add_argument("--out", type=option("out"), default=Path("probe-out"), help="output directory (default: %(default)s)")
    g.add_argument("--store", type=option("out"), help="feature store (default: OUT/store)")
    g.add_argument("--no-plot", action="store_true")
    g.add_argument("--no-progress", action="store_true")

    ap = _Parser(prog="repa-probe", description="Probe every layer x noise level of diffusion transformers against vision encoders.")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sweep", parents=[common], help="one checkpoint, every layer x t (Fig. 2a/2b)")
    p.add_argument("--checkpoint", type=option("checkpoint"), required=True)
    p = sub.add_parser("progress", parents=[common], help="a checkpoint series (Fig. 2c)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", type=option("run_dir"), help="a repa-train run directory (its checkpoints/step_*.pt)")
    src.add_argument("--checkpoints", nargs="+", type=option("checkpoint"))
    p.add_argument("--plot-layers", nargs="+", type=option("probe_layers"), default=[], help="layers drawn besides the max over layers")
    p = sub.add_parser("compare", parents=[common], help="named checkpoints side by side, e.g. REPA vs vanilla (Fig. 3)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", type=option("run_dir"), help="a repa-train --side-by-side directory")
    src.add_argument("--checkpoints", nargs="+", type=option("named_checkpoint", str), help="NAME=PATH pairs")
    p = sub.add_parser("plot", help="figures from a saved table")
    p.add_argument("--table", type=option("table"), required=True, help="a .parquet or .csv written by repa-probe")
    p.add_argument("--out", type=option("out"), help="figure directory (default: beside the table, figures/)")
    p.add_argument("--plot-layers", nargs="+", type=option("probe_layers"), default=[], help="layers drawn in progress curves")
    # options of the three picture commands (pca, patch-align, similarity): images, model weights, output
    pics = Parser(add_help=False)
    pics.add_argument("--out", type=option("out"), default=Path("probe-out"), help="output directory (default: %(default)s)")
    pics.add_argument("--dataset", default=None, help="fashion-mnist, scenes, shapes, digits or folder (default: the checkpoint's own)")
    pics.add_argument("--data-root", type=option("image_root", str), help="image folder root for --dataset folder")
    pics.add_argument("--split", default=d.split, help="(default: %(default)s)")
    pics.add_argument("--label", default=d.label, choices=LABELS)
    pics.add_argument("--seed", type=option("seed"), default=d.seed)
    pics.add_argument("--weights", default=d.weights, choices=["ema", "model"])
    pics.add_argument("--codec", default=d.codec)
    pics.add_argument("--batch-size", type=option("batch_size"), default=d.batch_size)
    pics.add_argument("--device", type=option("device"), default=d.device)
    pics.add_argument("--no-plot", action="store_true")
    p = sub.add_parser("pca", parents=[pics], help="token PCA maps: the first three principal components of patch tokens as RGB")
    p.add_argument("--checkpoint", type=option("checkpoint"), required=True)
    p.add_argument("--n-images", type=option("n_images"), default=8, help="images shown (default: %(default)s)")
    p.add_argument("--n-fit", type=option("n_fit"), default=64, help="images the PCA is fitted on (default: %(default)s)")
    p.add_argument("--layers", nargs="+", type=option("layers"), default=["all"], help="'all' (0..depth) or layer numbers")
    p.add_argument("--t", nargs="+", type=option("t"), default=[0.0], help="noise levels in REPA time (default: 0)")
    p.add_argument("--encoders", nargs="*", default=[], help="target encoders whose token maps are shown too")
    p.add_argument("--encoder-weights", nargs="+", type=option("encoder_weights", str), default=[], help="one local weights path per encoder ('' for the default)")
    p.add_argument("--random-init-encoder", action="store_true", help="random encoder weights (offline demos)")
    p.add_argument("--no-progress", action="store_true")
    p = sub.add_parser("patch-align", parents=[pics],
                       help="per-patch alignment maps: projector and/or ridge predictions vs the teacher's tokens")
    p.add_argument("checkpoints", nargs="+", type=option("named_checkpoint", str), help="checkpoint paths or NAME=PATH pairs (drawn side by side)")
    p.add_argument("--methods", nargs="+", default=["projector", "ridge"], choices=["projector", "ridge"],
                   help="projector: the REPA projector (skipped for vanilla); ridge: a ridge map fitted on held-out images")
    p.add_argument("--layers", nargs="+", type=option("probe_layers"), help="ridge layers (default: the aligned depth)")
    p.add_argument("--t", nargs="+", type=option("t"), default=[0.0], help="noise levels in REPA time (default: 0)")
    p.add_argument("--encoder", help="the teacher (default: the run's own; required for vanilla runs)")
    p.add_argument("--train-split", default=d.train_split, help="split the ridge map is fitted on (default: %(default)s)")
    p.add_argument("--n-fit", type=option("n_fit"), default=64, help="training-split images the ridge map is fitted on (default: %(default)s)")
    p.add_argument("--ridge", type=option("ridge"), default=1e-2, help="ridge penalty relative to the mean token variance (default: %(default)s)")
    p.add_argument("--n-images", type=option("n_images"), default=8, help="images shown (default: %(default)s)")
    p.add_argument("--random-init-encoder", action="store_true", help="random encoder weights (offline demos)")
    p.add_argument("--encoder-weights", nargs="+", type=option("encoder_weights", str), default=[], help="a local weights path for the teacher")
    sim = sub.add_parser("similarity", parents=[pics], help="every layer of CKPT_A against every layer of CKPT_B (CKA, CKNNA)")
    sim.add_argument("checkpoint_a", type=option("checkpoint"), metavar="CKPT_A")
    sim.add_argument("checkpoint_b", type=option("checkpoint"), metavar="CKPT_B", help="the same path as CKPT_A for a self-similarity map")
    sim.add_argument("--layers-a", nargs="+", type=option("layers"), default=["all"], help="'all' (0..depth) or layer numbers of CKPT_A")
    sim.add_argument("--layers-b", nargs="+", type=option("layers"), default=["all"], help="'all' (0..depth) or layer numbers of CKPT_B")
    sim.add_argument("--t", nargs="+", type=option("t"), default=[0.0], help="noise levels in REPA time (default: 0)")
    sim.add_argument("--metrics", nargs="+", default=["cka", "cknna"], choices=["cka", "cknna", "mutual_knn"])
    sim.add_argument("--pooling", default="mean", choices=POOLINGS)
    sim.add_argument("--n-images", type=option("n_images"), default=500, help="images (default: %(default)s)")
    sim.add_argument("--k", type=option("k"), default=d.k, help="neighbours for CKNNA / mutual k-NN (default: %(default)s)")
    sim.add_argument("--store", type=option("out"), help="feature store (default: OUT/store)")
    return ap


def _config(args: argparse.Namespace) -> ProbeConfig:
    return ProbeConfig(
        dataset=args.dataset, data_root=args.data_root, image_size=args.image_size, split=args.split,
        n_images=args.n_images, train_split=args.train_split, n_train=args.n_train, ts=tuple(args.t),
        layers=_layers(args.layers), metrics=tuple(args.metrics), k=args.k, cknna_mode=args.cknna_mode,
        q=args.q, normalize=not args.no_normalize, pooling=args.pooling, token_samples=args.token_samples,
        r_near=args.r_near, r_far=args.r_far, label=args.label, seed=args.seed,
        codec=args.codec, weights=args.weights, encoder_weights=tuple(args.encoder_weights),
        random_init_encoder=args.random_init_encoder, probe_method=args.probe_method, probe_epochs=args.probe_epochs,
        probe_batch_size=args.probe_batch_size, probe_lr=args.probe_lr, batch_size=args.batch_size,
        device=args.device, store=str(args.store or args.out / "store"), progress=not args.no_progress,
    )


def _run(args: argparse.Namespace) -> list[Path]:
    """Run the subcommand; returns the paths it wrote."""
    if args.command == "plot":
        table = plots.check_table(analyses.load_table(args.table), args.table)
        return plots.plot_all(table, args.out or args.table.parent / "figures", args.plot_layers)
    if args.command == "pca":
        return _pca(args)
    if args.command == "patch-align":
        return _patch_align(args)
    if args.command == "similarity":
        return _similarity(args)
    cfg = _config(args)
    kw = dict(dataset=args.dataset, encoders=args.encoders, out=args.out, config=cfg)
    if args.command == "sweep":
        df, name = analyses.layer_sweep(args.checkpoint, **kw), "layer_sweep"
    elif args.command == "progress":
        df, name = analyses.training_progress(args.run or args.checkpoints, **kw), "training_progress"
    else:
        df, name = analyses.compare(args.run or _named(args.checkpoints), **kw), "compare"
    paths = [args.out / f"{name}.{ext}" for ext in ("parquet", "csv", "json")]
    if not args.no_plot:
        paths += plots.plot_all(df, args.out / "figures", getattr(args, "plot_layers", []))
    return paths


def _pca(args: argparse.Namespace) -> list[Path]:
    from probe.extract import image_set
    from probe.pca import token_pca
    from train.run.checkpoints import atomic_write
    from train.data.datasets import build_dataset
    from probe.run_defaults import trained_on
    from train.models.loading import load

    if not args.checkpoint.is_file():
        raise UserError(f"checkpoint {args.checkpoint} does not exist: check the path")
    model = load(args.checkpoint, weights=args.weights, device=args.device)
    found = trained_on(model)
    if args.dataset is None:
        args.dataset, args.data_root = found["dataset"], args.data_root or found["data_root"]
    args.codec = args.codec or found["codec"]
    kw = {"size": model.cfg.input_size * build_codec_downsample(args.codec), **({"root": args.data_root} if args.data_root else {})}
    data = build_dataset(args.dataset, args.split, **kw)
    name = f"{args.dataset}/{args.split}"
    result = token_pca(args.checkpoint, image_set(data, args.n_images, args.seed, name), layers=_layers(args.layers), ts=args.t,
                       encoder=args.encoders or None, fit_images=image_set(data, args.n_fit, args.seed + 1, name), label=args.label,
                       seed=args.seed, weights=args.weights, codec=args.codec, batch_size=args.batch_size, device=args.device,
                       encoder_weights=tuple(args.encoder_weights), random_init_encoder=args.random_init_encoder,
                       progress=not args.no_progress)
    table = result.table()
    paths = [result.save(args.out / "token_pca.npz"),
             atomic_write(args.out / "token_pca.csv", lambda tmp: table.to_csv(tmp, index=False)),
             atomic_write(args.out / "token_pca.json", lambda tmp: Path(tmp).write_text(json.dumps(result.provenance, indent=2, default=str)))]
    return paths + ([] if args.no_plot else plots.token_pca(result, args.out / "figures"))


def _patch_align(args: argparse.Namespace) -> list[Path]:
    from probe.patch_alignment import patch_alignment
    from train.run.checkpoints import atomic_write

    named = {}
    for item in args.checkpoints:
        name, sep, path = item.rpartition("=") if "=" in item else ("", "", item)
        path = Path(path)
        named[name or (path.parent.parent.name if path.parent.name == "checkpoints" else path.stem)] = path
    if len(named) != len(args.checkpoints):
        raise UserError("two checkpoints share a run name: name them, e.g. REPA=a.pt vanilla=b.pt")
    results = {}
    for name, path in named.items():
        results[name] = patch_alignment(path, args.dataset, methods=args.methods, layers=args.layers, ts=args.t, encoder=args.encoder,
                                        n_images=args.n_images, n_fit=args.n_fit, ridge=args.ridge, label=args.label, seed=args.seed,
                                        split=args.split, train_split=args.train_split, data_root=args.data_root, weights=args.weights,
                                        codec=args.codec, batch_size=args.batch_size, device=args.device,
                                        encoder_weights=tuple(args.encoder_weights), random_init_encoder=args.random_init_encoder)
    table = pd.concat([r.table().assign(run=name) for name, r in results.items()], ignore_index=True)
    prov = {name: r.provenance for name, r in results.items()}
    paths = [results[name].save(args.out / f"patch_alignment_{name}.npz") for name in results]
    paths += [atomic_write(args.out / "patch_alignment.csv", lambda tmp: table.to_csv(tmp, index=False)),
              atomic_write(args.out / "patch_alignment.json", lambda tmp: Path(tmp).write_text(json.dumps(prov, indent=2, default=str)))]
    return paths + ([] if args.no_plot else plots.patch_alignment(results, args.out / "figures"))


def _similarity(args: argparse.Namespace) -> list[Path]:
    from probe.similarity import model_similarity

    same = args.checkpoint_a.resolve() == args.checkpoint_b.resolve()
    df = model_similarity(args.checkpoint_a, args.checkpoint_a if same else args.checkpoint_b, layers_a=_layers(args.layers_a),
                          layers_b=_layers(args.layers_b), ts=args.t, metrics=args.metrics, pooling=args.pooling, dataset=args.dataset,
                          n_images=args.n_images, seed=args.seed, out=args.out, k=args.k, label=args.label, split=args.split,
                          data_root=args.data_root, weights=args.weights, codec=args.codec, batch_size=args.batch_size,
                          device=args.device, store=str(args.store or args.out / "store"))
    paths = [args.out / f"similarity.{ext}" for ext in ("parquet", "csv", "json")]
    return paths + ([] if args.no_plot else plots.similarity_heatmap(df, args.out / "figures"))


def build_codec_downsample(codec: str) -> int:
    """The pixel-to-latent downsampling of ``codec`` (1 for identity) without loading its weights."""
    from train.data.latents import build_codec

    return 1 if codec in ("identity", "grey") else build_codec(codec).downsample


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``repa-probe``; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        for path in _run(args):
            print(path)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted: run the same command again to resume (extracted features are kept in the store)", file=sys.stderr)
        return 2
    return 0
