"""Generation evaluation: sampling to disk, feature networks, Frechet distance and friends.

The pieces live in modules of their own, all re-exported here so ``train.evaluation.evaluate.X`` keeps working:

1. **Sampling** (``train.evaluation.samples``): :class:`SampleSpec`, :func:`generate`, :func:`sample_to_dir`,
   :func:`load_samples`; sample ``i`` starts from noise seeded by ``(seed, i)``, made in fixed chunks
   that are the unit of work, sharding and resume (sharded, resumed and single-process runs agree).
2. **Metrics** (``train.evaluation.generation_metrics``): :func:`feature_statistics`, :func:`frechet_distance`,
   :func:`precision_recall`, :func:`inception_score` -- pure functions on feature arrays.
3. **Feature networks** (``train.evaluation.feature_nets``): one interface (:class:`FeatureNet`: uint8 images ->
   dict of ``(B, D)`` arrays, ``"features"`` always) over (a) the FID Inception (pytorch-fid's
   weights, only from a local file), (b) any :mod:`train.targets.encoders` encoder (mean-pooled patch tokens,
   "FD-DINOv2 style") and (c) the **built-in evaluator**, a small ResNet classifier trained on the
   shapes set, independent of the REPA teacher (a CNN, not a ViT; its own training run and seed).
4. **Reference statistics** of real data (``train.evaluation.feature_nets``), computed once and cached under
   ``$REPA_CACHE/reference``.

This module: 5. **Evaluation**: :func:`evaluate_samples`, :func:`evaluate_checkpoint`, and
:func:`build_training_evaluator` for the training loop; 6. **CLI**: ``repa-sample``
(:func:`sample_main`) and ``python -m train.evaluation {sample,fid}``.

Every result records the feature network (with its provenance), the sample count, the sampler and
its steps.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from train.run.allocator import keep_freed_memory
from train.run.config import TrainConfig
from train.errors import UserError
from train.run.rules import Parser, option
from train.evaluation.feature_nets import (FeatureNet, EVALUATOR, _EVALUATOR_FORMAT, EvaluatorConfig, ResBlock, EvaluatorCNN,
                                EVALUATORS, evaluator_config, evaluator_path, _evaluator_input, _fit_evaluator,
                                train_builtin_evaluator, BuiltinEvaluator, EncoderFeatures, INCEPTION,
                                INCEPTION_FILE, _tf_pool_block, fid_inception, inception_weights, InceptionFeatures,
                                load_feature_net, extract, PR_MAX, Reference, real_images, reference)  # noqa: F401 - re-exported
from train.evaluation.generation_metrics import (feature_statistics, _psd_sqrt, frechet_distance, _kth_nn_radius, _in_manifold,
                                      precision_recall, inception_score, kid)  # noqa: F401 - re-exported
from train.data.latents import Codec, build_codec
from train.evaluation.samples import (SampleSpec, seeded_generator, sample_labels, sample_chunk, default_codec, generate,
                           generate_spec, _png_path, _write_png, _read_png, _png_ok, _save_npz, npz_name, shard,
                           sample_to_dir, load_samples)  # noqa: F401 - re-exported

Tensor = torch.Tensor
KID_SUBSET = 1000  # torch-fidelity's default subset size
REFERENCE_DATASETS = ["fashion-mnist", "scenes", "shapes", "digits", "folder"]  # image datasets FD can compare with

# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


def evaluate_samples(images: Tensor, labels: Tensor | None, net: FeatureNet, ref: Reference, k: int = 3,
                     batch: int = 256) -> dict[str, Any]:
    """Score uint8 samples against ``ref``: ``fd`` (Frechet distance in ``net``'s features), ``kid`` and
    ``kid_std`` (:func:`train.evaluation.generation_metrics.kid`: 100 subsets of min(1000, N) against the
    reference's stored features, at most :data:`PR_MAX`), ``precision``
    and ``recall`` (k-NN manifolds, up to :data:`PR_MAX` of each set, equal sizes), and where ``net``
    offers them ``sfid``, ``inception_score`` (+ std), and ``class_acc`` (the fraction of samples
    classified as their label; needs labels and a network trained on the reference dataset)."""
    return score_features(extract(net, images, batch), labels, net, ref, k)


def fd_kid(features: np.ndarray, ref: Reference, kid_memo: dict | None = None) -> dict[str, float]:
    """``fd``, ``kid`` and ``kid_std`` of sample features against ``ref``, as :func:`evaluate_samples`
    computes them (``kid_memo``: :func:`train.evaluation.generation_metrics.kid`'s)."""
    res = {"fd": frechet_distance(*feature_statistics(features), *ref.stats["features"])}
    res.update(kid(features, ref.features, subset_size=min(KID_SUBSET, len(features), len(ref.features)), memo=kid_memo))
    return res


def score_features(feats: dict[str, np.ndarray], labels: Tensor | None, net: FeatureNet, ref: Reference, k: int = 3,
                   kid_memo: dict | None = None) -> dict[str, Any]:
    """:func:`evaluate_samples` on features already extracted by ``net`` (:func:`extract`)."""
    n = len(feats["features"])
    res: dict[str, Any] = fd_kid(feats["features"], ref, kid_memo)
    m = min(len(ref.features), n, PR_MAX)
    res.update(precision_recall(ref.features[:m], feats["features"][:m], k=k))
    if "spatial" in feats and "spatial" in ref.stats:
        res["sfid"] = frechet_distance(*feature_statistics(feats["spatial"]), *ref.stats["spatial"])
    if "is_logits" in feats:
        res["inception_score"], res["inception_score_std"] = inception_score(feats["is_logits"])
    if "class_logits" in feats and ref.meta.get("dataset") == net.classes_of:
        prob = torch.from_numpy(feats["class_logits"]).double().softmax(1)
        pred = prob.argmax(1)
        res["class_confidence"] = prob.max(1).values.mean().item()  # the evaluator's mean top-class probability
        res["class_histogram"] = torch.bincount(pred, minlength=prob.shape[1]).tolist()
        if labels is not None:
            res["class_acc"] = (pred == labels.cpu()).float().mean().item()
    res.update(n=n, pr_n=m, k=k, feature=net.provenance,
               reference={key: ref.meta[key] for key in ("dataset", "root", "split", "n", "size")})
    return res


def score_with_halves(images: Tensor, labels: Tensor | None, net: FeatureNet, ref: Reference,
                      kid_memo: dict | None = None) -> dict[str, Any]:
    """What a training-time evaluation records of its samples: :func:`evaluate_samples`' ``fd``, ``kid``,
    ``kid_std``, ``precision``, ``recall`` and the class scores, and the noise of one estimate, FD and KID
    of each half of the samples (``fd_half_a``, ``kid_half_a``, ``..._b``; from 8 samples on). The
    features are extracted once (a sample's features do not depend on the batch it is in:
    tests/test_evaluate.py), so the halves cost their FD and KID only."""
    feats = extract(net, images)
    res = score_features(feats, labels, net, ref, kid_memo=kid_memo)
    out = {key: res[key] for key in ("fd", "kid", "kid_std", "precision", "recall", "class_acc", "class_confidence",
                                     "class_histogram") if key in res}
    if len(images) >= 8:
        half = len(images) // 2
        for tag, part in (("a", slice(0, half)), ("b", slice(half, 2 * half))):
            r = fd_kid(feats["features"][part], ref, kid_memo)
            out.update({f"fd_half_{tag}": r["fd"], f"kid_half_{tag}": r["kid"]})
    return out


def evaluate_model(model: nn.Module, spec: SampleSpec, codec: Codec, feature: str = EVALUATOR,
                   dataset: str = "shapes", feature_weights: str | None = None, ref_split: str = "train",
                   ref_n: int = 10_000, root: str | None = None, k: int = 3, progress: bool = True) -> dict[str, Any]:
    """Sample ``spec`` from ``model`` and score it with :func:`evaluate_samples` against ``ref_n`` real
    images of ``dataset``/``ref_split`` at the samples' size; the result also records the checkpoint
    (``model.source``) and every sampling setting."""
    images, labels = generate_spec(model, spec, codec, progress)
    device = next(model.parameters()).device
    net = load_feature_net(feature, feature_weights, device, progress, dataset)
    ref = reference(net, dataset, ref_split, ref_n, images.shape[-1], root, progress=progress)
    return {**evaluate_samples(images, labels, net, ref, k), **asdict(spec), "codec": codec.name,
            "checkpoint": getattr(model, "source", None)}


def evaluate_checkpoint(ckpt: str | os.PathLike, n: int = 1000, sampler: str = "euler", steps: int = 50,
                        feature: str = EVALUATOR, dataset: str = "shapes", cfg_scale: float = 1.0,
                        guidance_interval: tuple[float, float] = (0.0, 1.0), seed: int = 0, chunk: int = 64,
                        weights: str = "ema", path: str = "linear", feature_weights: str | None = None,
                        ref_split: str = "train", ref_n: int = 10_000, root: str | None = None, k: int = 3,
                        device: str | torch.device = "cpu", progress: bool = True) -> dict[str, Any]:
    """Load a checkpoint and :func:`evaluate_model` ``n`` samples (labels uniform from ``seed``):
    ``fd``, ``precision``, ``recall``, ``class_acc`` (built-in evaluator on shapes), ``sfid`` and
    ``inception_score`` (Inception), with the feature network's provenance and the sampling settings."""
    from train.models.loading import load

    model = load(ckpt, weights=weights, device=device)
    spec = SampleSpec(n, sampler, steps, cfg_scale, tuple(guidance_interval), seed, (), chunk, path)
    return evaluate_model(model, spec, default_codec(model), feature, dataset, feature_weights, ref_split,
                          ref_n, root, k, progress)


def build_training_evaluator(cfg: TrainConfig, feature: str = EVALUATOR, feature_weights: str | None = None,
                             ref_n: int = 10_000, steps: int | None = None,
                             progress: bool = False) -> Callable[[nn.Module, int], dict[str, Any]]:
    """``evaluator(ema_model, step) -> dict`` for :func:`train.run.loop.train`.

    Samples ``cfg.eval_samples`` images with Euler and ``steps`` (default ``cfg.sample_steps``) steps
    from noise fixed by ``cfg.seed`` (REPA and vanilla runs of one seed share it), labels cycling
    through the classes, and scores them with ``feature`` against ``ref_n`` real training images:
    ``fd``, ``precision``, ``recall``, ``class_acc`` (shapes only) and
    ``eval_n``/``eval_sampler``/``eval_steps``/``eval_feature``.  The feature network and the
    reference statistics are loaded (trained, computed and cached on first use) here, once.
    Cost: sampling dominates -- 256 samples x 25 Euler steps of the ``tiny`` preset are as much model
    compute as ~35 of its training steps (measured: 23 CPU-seconds on one thread of a busy 2-core
    machine, 35 s wall); scoring 256 images takes well under a second.
    """
    spec = SampleSpec(cfg.eval_samples, "euler", steps or cfg.sample_steps, seed=cfg.seed,
                      labels=tuple(range(cfg.model.num_classes)), path=cfg.path)
    codec = build_codec(cfg.data.codec)
    net = load_feature_net(feature, feature_weights, progress=progress, dataset=cfg.data.dataset)
    ref = reference(net, cfg.data.dataset, cfg.eval_ref_split, ref_n, cfg.data.image_size, cfg.data.root, progress=progress)

    kid_memo: dict = {}  # the reference subsets' kernel sums, the same at every evaluation of the run

    def evaluate(ema: nn.Module, step: int) -> dict[str, Any]:
        device = next(ema.parameters()).device
        images, labels = generate_spec(ema, spec, codec.to(device))
        out = score_with_halves(images, labels, net.to(device), ref, kid_memo)
        return {**out, "eval_n": spec.n, "eval_sampler": spec.sampler, "eval_steps": spec.steps,
                "eval_feature": net.cache_id, "eval_reference": f"{cfg.data.dataset}/{cfg.eval_ref_split} ({ref.meta.get('n')})"}

    evaluate.spec, evaluate.codec = spec, codec  # what it samples, for a caller that times or repeats the sampling
    return evaluate


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def _sampling_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--name", help="model name, e.g. SiT-XL/2 (default: inferred)")
    ap.add_argument("--flavour", choices=["auto", "repa", "sit", "dit"], default="auto")
    ap.add_argument("--weights", choices=["ema", "model"], default="ema", help="which weights of a training checkpoint")
    ap.add_argument("--sampler", choices=["euler", "heun", "sde"], default="euler")
    ap.add_argument("--steps", type=option("sample_steps_cli"), default=50)
    ap.add_argument("--cfg-scale", type=option("cfg_scale"), default=1.0, help="classifier-free guidance scale (1: none; 0: unconditional)")
    ap.add_argument("--guidance-low", type=option("guidance"), default=0.0, help="guidance interval start (REPA time)")
    ap.add_argument("--guidance-high", type=option("guidance"), default=1.0, help="guidance interval end (REPA time)")
    ap.add_argument("--path", choices=["linear", "cosine"], default="linear", help="the interpolant the model was trained with")
    ap.add_argument("--num-samples", "--n", dest="n", type=option("num_samples"), default=64,
                    help="number of samples (spell it --num-samples under torchrun, which takes --n as its own)")
    ap.add_argument("--seed", type=option("seed"), default=0)
    ap.add_argument("--batch-size", type=option("batch_size"), default=64, help="samples per chunk (the unit of SDE noise, sharding and resume)")
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--labels", type=option("class_id"), nargs="+", help="class ids, cycled over the samples (default: uniform from the seed)")
    group.add_argument("--class-id", type=option("class_id"), help="one class for all samples")
    ap.add_argument("--codec", choices=["identity", "grey", "sd-vae"], help="default: identity for 3-channel models, grey for 1-channel ones, else sd-vae")
    ap.add_argument("--vae", default="stabilityai/sd-vae-ft-ema", help="sd-vae decoder: a local diffusers directory or cached hub name")
    ap.add_argument("--device", type=option("device"), default="auto", help="auto (cuda:LOCAL_RANK if available, else cpu), cpu, cuda:1, ...")
    ap.add_argument("--no-progress", action="store_true")


def _device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else torch.device("cpu")


def _model_spec_codec(args: argparse.Namespace, text: bool = False) -> tuple[nn.Module, SampleSpec, Codec]:
    """The model, what to sample and the codec, from the options of :func:`_sampling_args`;
    ``text``: a text-to-image sample (``--prompts`` / ``--context-features``, :mod:`train.evaluation.sampling_t2i`)."""
    from train.models.loading import load

    if args.guidance_low > args.guidance_high:
        raise UserError(f"--guidance-low {args.guidance_low} is above --guidance-high {args.guidance_high}: pass low <= high (REPA time)")
    device = _device(args.device)
    null = {"null_context": args.null_context} if getattr(args, "null_context", None) else {}
    model = load(args.ckpt, name=args.name, flavour=args.flavour, weights=args.weights, device=device, **null)
    if model.cfg.is_mmdit and not text:
        raise UserError(f"{args.ckpt} is a text-to-image {model.cfg.name}: pass --prompts FILE (one caption per line) "
                        "or --context-features FILE.npy")
    if text and (args.labels or args.class_id is not None):
        raise UserError("--labels/--class-id are class ids; a text-to-image sample is conditioned on --prompts or "
                        "--context-features: drop them")
    num_classes = model.cfg.num_classes
    labels = tuple(args.labels or ()) + (() if args.class_id is None else (args.class_id,))
    bad = [y for y in labels if not 0 <= y < num_classes]
    if bad:
        raise UserError(f"class {bad[0]} is outside [0, {num_classes}): pass class ids the model knows")
    spec = SampleSpec(args.n, args.sampler, args.steps, args.cfg_scale, (args.guidance_low, args.guidance_high),
                      args.seed, labels, args.batch_size, args.path)
    from train.data.latents import CODEC_CHANNELS, PIXEL_CODECS, codec_for_channels

    codec_name = args.codec or codec_for_channels(model.cfg.in_channels)
    if codec_name in PIXEL_CODECS and model.cfg.in_channels != CODEC_CHANNELS[codec_name]:
        raise UserError(f"the {codec_name} codec gives {CODEC_CHANNELS[codec_name]} channel(s) but the model has "
                        f"{model.cfg.in_channels}: use --codec {codec_for_channels(model.cfg.in_channels)}")
    kw = {"encoder": args.vae, "decoder": args.vae} if codec_name == "sd-vae" else {}
    return model, spec, build_codec(codec_name, **kw).to(device)


def sample_main(argv: list[str] | None = None) -> int:
    """``repa-sample``: N samples as PNGs + ADM ``.npz`` + grid + ``sample_config.json``; resumable and
    shardable (under torchrun/accelerate each process takes every WORLD_SIZE-th chunk)."""
    ap = Parser(prog="repa-sample", description=sample_main.__doc__)
    ap.add_argument("--ckpt", type=option("checkpoint"), required=True, help="any DiT/SiT/REPA/repa-toolkit checkpoint")
    ap.add_argument("--out", type=option("out"), required=True, help="output directory (resumes if it holds samples)")
    _sampling_args(ap)
    t2i = ap.add_argument_group("text-to-image (MMDiT checkpoints; captions cycled over the samples, train.evaluation.sampling_t2i)")
    text = t2i.add_mutually_exclusive_group()
    text.add_argument("--prompts", type=option("prompts"), metavar="FILE", help="one caption per line (the run's built-in caption encoder)")
    text.add_argument("--context-features", type=option("context_features"), metavar="FILE", help=".npy caption features, (tokens, width) or (N, tokens, width)")
    t2i.add_argument("--null-context", type=option("null_context"), metavar="FILE", help="the empty caption's features (.npy) for an official T2I checkpoint")
    args = ap.parse_args(argv)
    keep_freed_memory()  # train.run.allocator: sampling's activations reuse the heap
    given, contexts, cond_meta = None, None, {}
    if args.prompts is not None or args.context_features is not None:  # read before the model loads
        from train.evaluation.sampling_t2i import read_text_input, text_conditions

        given, cond_meta = read_text_input(args.prompts, args.context_features)
    model, spec, codec = _model_spec_codec(args, text=given is not None)
    if given is not None:
        contexts = text_conditions(model, given, args.cfg_scale, f"caption features {args.context_features}")  # (P, L, C), CPU
        spec = replace(spec, labels=tuple(range(len(contexts))))  # caption i % P for sample i
    rank, world = shard()
    meta = {"checkpoint": model.source, **({"vae": args.vae} if codec.name == "sd-vae" else {}), **cond_meta}
    res = sample_to_dir(model, spec, codec, args.out, rank, world, meta, progress=not args.no_progress, contexts=contexts)
    if res["npz"] is not None:
        print(res["npz"])
    return 0


def _checkpoint_data(source: Any) -> dict:
    """The ``data`` section of the TrainConfig recorded in the checkpoint ``source`` names (a
    ``model.source`` record, as ``sample_config.json`` keeps it), or {} when there is none to read:
    no record, a moved file, a checkpoint of another codebase."""
    path = source.get("path") if isinstance(source, dict) else None
    if not path or not Path(path).is_file():
        return {}
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - an unreadable file only loses the default, which --dataset gives
        return {}
    return ((obj.get("train_config") or {}).get("data") or {}) if isinstance(obj, dict) else {}


def fid_main(argv: list[str] | None = None) -> int:
    """``python -m train.evaluation fid``: FD, precision/recall and class accuracy (sFID and IS with the
    Inception) of a checkpoint's samples or of existing samples; prints one JSON object."""
    ap = Parser(prog="python -m train.evaluation fid", description=fid_main.__doc__)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", type=option("checkpoint"), help="sample from this checkpoint")
    src.add_argument("--samples", type=option("samples"), help="score an .npz (arr_0 uint8 NHWC) or a repa-sample directory")
    ap.add_argument("--feature", default=EVALUATOR, help=f"{EVALUATOR} (default), {INCEPTION} or an encoder name")
    ap.add_argument("--feature-weights", type=option("feature_weights", str), help="local weights of the feature network")
    ap.add_argument("--inception-weights", type=option("inception_weights", str), help=f"local {INCEPTION_FILE} (implies --feature {INCEPTION})")
    ap.add_argument("--dataset", choices=REFERENCE_DATASETS,
                    help="reference data (default: the data the checkpoint, or the one the samples came from, was trained on; else shapes)")
    ap.add_argument("--root", type=option("image_root", str), help="reference image folder (with --dataset folder)")
    ap.add_argument("--ref-split", choices=["train", "val"], help="default: val (the 10,000 test images) for fashion-mnist, else train")
    ap.add_argument("--ref-n", type=option("ref_n"), default=10_000, help="number of reference images")
    ap.add_argument("--k", type=option("pr_k"), default=3, help="k of precision/recall")
    _sampling_args(ap)
    args = ap.parse_args(argv)
    keep_freed_memory()  # train.run.allocator
    feature, weights = (INCEPTION, args.inception_weights) if args.inception_weights else (args.feature, args.feature_weights)
    progress = not args.no_progress
    model = spec = codec = None
    sampling: dict = {}  # existing samples: what repa-sample recorded of them (sampler, steps, checkpoint)
    if args.ckpt is not None:
        model, spec, codec = _model_spec_codec(args)
        trained_on = (getattr(model, "train_config", None) or {}).get("data") or {}
    else:
        cfg_file = (args.samples if args.samples.is_dir() else args.samples.parent) / "sample_config.json"
        sampling = json.loads(cfg_file.read_text()) if cfg_file.exists() else {}
        trained_on = _checkpoint_data(sampling.get("checkpoint"))
    if args.dataset is None and trained_on.get("dataset") in REFERENCE_DATASETS:  # its own data, as repa-probe
        args.dataset, args.root = trained_on["dataset"], args.root or trained_on.get("root")
    elif args.dataset is None:
        print("fid: no --dataset, and no training data recorded with the checkpoint: scoring against shapes (pass --dataset to choose)",
              file=sys.stderr)
        args.dataset = "shapes"
    args.ref_split = args.ref_split or ("val" if args.dataset == "fashion-mnist" else "train")
    ref_kw = dict(ref_split=args.ref_split, ref_n=args.ref_n, root=args.root, k=args.k, progress=progress)
    if model is not None:
        res = evaluate_model(model, spec, codec, feature, args.dataset, weights, **ref_kw)
    else:
        images, labels = load_samples(args.samples)
        need = max(2, args.k + 1)  # FD: a covariance needs 2 rows; precision/recall: k + 1 of each set
        if len(images) < need:
            raise UserError(f"--samples {args.samples} holds {len(images)} sample(s); FD and precision/recall (k={args.k}) need at least "
                            f"{need}: write more with repa-sample --ckpt CKPT --num-samples {max(need, 1000)} --out {args.samples}")
        net = load_feature_net(feature, weights, _device(args.device), progress, args.dataset)
        ref = reference(net, args.dataset, args.ref_split, args.ref_n, images.shape[-1], args.root, progress=progress)
        res = evaluate_samples(images, labels, net, ref, args.k)
        res.update({"samples": str(args.samples.resolve()), **{k: v for k, v in sampling.items() if k not in res}})
    print(json.dumps(res, indent=2, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m train.evaluation {sample,fid} ...``; user errors end in one line and exit status 2."""
    from train.errors import fail as _fail

    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"sample": sample_main, "fid": fid_main}
    if not argv or argv[0] not in commands:
        return _fail(f"usage: python -m train.evaluation {{{','.join(commands)}}} ...: pick a command (--help after it)")
    try:
        return commands[argv[0]](argv[1:])
    except UserError as e:
        return _fail(str(e))


if __name__ == "__main__":
    sys.exit(main())
