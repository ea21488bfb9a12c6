"""Cost of a layer x t feature sweep: this toolkit's one forward per (batch, t) against one forward
per (layer, t).

Side by side in one run, on the same randomly initialised model, images, noise and null label:

* ``ours``  ``probe.extract.extract``: one forward per (batch, t) through
  ``train.models.loading.predict(..., return_hidden=all layers, head=False)``, every layer's hidden state
  kept (mean-pooled) from that single forward;
* ``per-layer, truncated``  the straightforward sweep, one forward per (layer, t) per batch keeping
  only that layer: ``predict(..., return_hidden=[layer], head=False)``, which stops after block
  ``layer`` (the model's own early exit, so the deep layers cost more than the shallow ones);
* ``per-layer, full``  the same with the whole network run each time (``head=True``), which is what
  a forward hook on an unmodified model costs.

Both per-layer sweeps draw the noise once per batch (``probe.extract.image_noise``, as ``extract``
does) and noise each batch to every t with ``train.objectives.interpolants.interpolate``.  Before timing, the
three ways are run on a few images and their features compared (``torch.testing.assert_close``);
the timed features are compared again afterwards.  Timing is interleaved by batch and t (ours,
truncated, full on batch 1 at t = 0, the same at the next t, ..., next batch), ``extract`` being
called on one batch and one t at a time, so that load on the machine hits all three alike.

The adaLN-Zero gates and the zero output layer of the published initialisation make every block the
identity at initialisation; they are redrawn (normal, std 0.02) so that layers differ, as in a
trained model.  The cost is that of any model of the same shape.

Models: ``tiny`` is the tiny preset's model and codec (SiT-T/2 on 16 x 16 grey pixels since the
Fashion-MNIST default; the scenes-era BENCHMARKS.md rows were SiT-T/4 on 32 x 32 RGB); any
published name (``SiT-S/2``, ``SiT-B/2``, ...) runs on 32 x 32 x 4 latents (random latents passed
through a pass-through codec).

    python benchmarks/bench_layer_sweep.py                   # tiny + SiT-S/2, about 3 minutes on one core
    python benchmarks/bench_layer_sweep.py --quick           # a few seconds, no JSON unless --json
    python benchmarks/bench_layer_sweep.py --models SiT-B/2 --images 16 --batch 16
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import finish, header, save  # noqa: E402

DEFAULT_JSON = ROOT / "benchmarks" / "results" / "layer_sweep_cpu.json"
WAYS = ("ours", "per-layer-truncated", "per-layer-full")




def build_model(name: str):
    """A randomly initialised model and its input: ``(model, codec, images (N, ...) factory)``."""
    import torch

    from train.run.config import preset, published_config
    from train.data.latents import Codec, build_codec
    from train.models.loading import build

    if name == "tiny":
        mcfg, codec = preset("tiny").model, build_codec(preset("tiny").data.codec)
    else:
        mcfg = published_config(name, "repa", input_size=32, in_channels=4, z_dims=(768,))

        class Passthrough(Codec):
            """Latents in, latents out (the images handed to ``extract`` already are latents)."""

            name, channels, downsample = "latent-passthrough", mcfg.in_channels, 1

            def moments(self, images):
                return images.float(), torch.zeros_like(images, dtype=torch.float32)

            def _decode(self, z):
                return z

        codec = Passthrough()
    torch.manual_seed(0)
    model = build(**mcfg.to_dict()).eval().requires_grad_(False)
    for block in model.blocks:  # undo adaLN-Zero so that the blocks are not identities
        torch.nn.init.normal_(block.adaLN_modulation[-1].weight, std=0.02)
        torch.nn.init.normal_(block.adaLN_modulation[-1].bias, std=0.02)
    for layer in (model.final_layer.adaLN_modulation[-1], model.final_layer.linear):
        torch.nn.init.normal_(layer.weight, std=0.02)

    def images(n: int):
        g = torch.Generator().manual_seed(1)
        if name == "tiny":
            x = torch.randint(0, 256, (n, 3, mcfg.input_size, mcfg.input_size), dtype=torch.uint8, generator=g)
        else:
            x = torch.randn(n, mcfg.in_channels, mcfg.input_size, mcfg.input_size, generator=g)
        return x, torch.zeros(n, dtype=torch.long)

    return model, codec, images


def sweep_per_layer(model, codec, image_set, ts, layers, batch_size: int, seed: int, full: bool):
    """The straightforward sweep: one forward per (batch, t, layer) keeping only that layer.

    Returns (layers, ts, N, D) mean-pooled features, like ``extract(...).values``."""
    import torch

    from probe.extract import image_noise, pool
    from train.objectives.interpolants import interpolate
    from train.models.loading import predict

    cfg = model.cfg
    shape = (cfg.in_channels, cfg.input_size, cfg.input_size)
    parts = []
    with torch.no_grad():
        for idx, imgs, _ in image_set.batches(batch_size):
            x = codec.encode(imgs, sample=False)
            noise = image_noise(idx, shape, seed)
            per_t = []
            for t in ts:
                x_t = interpolate(x, noise, t)
                per_t.append(torch.stack([pool(predict(model, x_t, t, None, return_hidden=[layer], head=full).hidden[layer], "mean").float()
                                          for layer in layers]))
            parts.append(torch.stack(per_t, dim=1))  # (L, T, B, D)
    return torch.cat(parts, dim=2)


def ours(model, codec, image_set, ts, batch_size: int, seed: int):
    """This toolkit's sweep (``probe.extract.extract``): (layers, ts, N, D).

    ``extract`` records the code version with ``git rev-parse`` / ``git status`` on every call; that
    provenance lookup is replaced by a constant here (no git process, nothing touched in the checkout,
    and the timing is that of the sweep, as ``extract`` runs it once per sweep, not once per batch)."""
    from unittest import mock

    from probe import extract as ex

    with mock.patch.object(ex, "git_revision", lambda: "not-recorded-in-benchmark"):
        return ex.extract(model, image_set, ts=ts, layers="all", codec=codec, pooling="mean", label="null", seed=seed,
                          batch_size=batch_size, progress=False).values


def subset(image_set, start: int, stop: int):
    """The images at positions start..stop of ``image_set`` as an ImageSet of their own (same dataset
    indices, so the same noise draws)."""
    from probe.extract import ImageSet

    return ImageSet(image_set.data, image_set.indices[start:stop], image_set.name, f"{image_set.identity}:{start}-{stop}")


def run_model(name: str, n_images: int, batch_size: int, ts, ways, check_images: int, seed: int = 0) -> dict:
    import torch

    from probe.extract import image_set as make_image_set, resolve_layers

    model, codec, make_images = build_model(name)
    layers = resolve_layers(model, "all")
    data = make_images(n_images)
    images = make_image_set(data, name=f"random-{name}")
    fns = {
        "ours": lambda s, ts_: ours(model, codec, s, ts_, batch_size, seed),
        "per-layer-truncated": lambda s, ts_: sweep_per_layer(model, codec, s, ts_, layers, batch_size, seed, full=False),
        "per-layer-full": lambda s, ts_: sweep_per_layer(model, codec, s, ts_, layers, batch_size, seed, full=True),
    }

    # Same features, checked on a few images before timing (this also warms up every code path).
    check = subset(images, 0, min(check_images, n_images))
    ref = fns["ours"](check, ts)
    if len(layers) > 1:
        assert not torch.allclose(ref[0], ref[-1]), "first and last layer agree: the model is degenerate"
    for way in ways:
        if way != "ours":
            torch.testing.assert_close(fns[way](check, ts), ref, rtol=1e-5, atol=1e-5)

    seconds = dict.fromkeys(ways, 0.0)
    feats: dict = {w: [] for w in ways}
    for start in range(0, n_images, batch_size):
        part = subset(images, start, min(start + batch_size, n_images))
        per_t: dict = {w: [] for w in ways}
        for t in ts:
            for way in ways:  # interleaved batch by batch and t by t
                t0 = time.perf_counter()
                per_t[way].append(fns[way](part, (t,)))
                seconds[way] += time.perf_counter() - t0
        for way in ways:
            feats[way].append(torch.cat(per_t[way], dim=1))
    values = {w: torch.cat(f, dim=2) for w, f in feats.items()}
    max_diff = {w: (values[w] - values["ours"]).abs().max().item() for w in ways if w != "ours"}
    for way in ways:
        if way != "ours":
            torch.testing.assert_close(values[way], values["ours"], rtol=1e-5, atol=1e-5)

    n_batches = -(-n_images // batch_size)
    cfg = model.cfg
    res = {"config": {"depth": cfg.depth, "hidden_size": cfg.hidden_size, "tokens": cfg.num_tokens,
                      "input": [cfg.in_channels, cfg.input_size, cfg.input_size], "layers": len(layers)},
           "images": n_images, "batch": batch_size, "ts": list(ts), "features_shape": list(values["ours"].shape),
           "features_identical_max_abs_diff": max_diff, "ways": {}}
    forwards = {"ours": n_batches * len(ts), "per-layer-truncated": n_batches * len(ts) * len(layers),
                "per-layer-full": n_batches * len(ts) * len(layers)}
    # transformer blocks run per batch and t: what the cost ratio should be if blocks were all that counted
    blocks = {"ours": cfg.depth, "per-layer-truncated": sum(layers), "per-layer-full": len(layers) * cfg.depth}
    for way in ways:
        res["ways"][way] = {"seconds": seconds[way], "images_per_s": n_images / seconds[way], "forwards": forwards[way],
                            "blocks_per_batch_and_t": blocks[way], "blocks_x_ours": blocks[way] / blocks["ours"],
                            "x_ours": seconds[way] / seconds["ours"]}
    return res


def report(res: dict) -> str:
    lines = [f"command: {res['command']}",
             f"{res['date']}, {res['machine']['cpu']}, {res['machine']['threads']} thread(s), torch {res['machine']['torch']}",
             "", "| model | layers | images (batch) | way | forwards | seconds | images/s | time / ours | blocks / ours |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for name, m in res["models"].items():
        for way, d in m["ways"].items():
            lines.append(f"| {name} | {m['config']['layers']} | {m['images']} ({m['batch']}) | {way} | {d['forwards']} | "
                         f"{d['seconds']:.2f} | {d['images_per_s']:.2f} | {d['x_ours']:.2f}x | {d['blocks_x_ours']:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["tiny", "SiT-S/2"], help="'tiny' (the tiny preset) or names like SiT-S/2")
    ap.add_argument("--images", type=int, nargs="+", default=[256, 16], help="images per model (one value: all models)")
    ap.add_argument("--batch", type=int, nargs="+", default=[64, 16], help="batch size per model (one value: all models)")
    ap.add_argument("--ts", type=float, nargs="+", default=[0.0, 0.25, 0.5])
    ap.add_argument("--ways", nargs="+", choices=WAYS, default=list(WAYS))
    ap.add_argument("--check-images", type=int, default=2, help="images compared across the ways before timing")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, help=f"results file (default {DEFAULT_JSON.relative_to(ROOT)}; none with --quick)")
    ap.add_argument("--quick", action="store_true", help="small run (tiny, 32 images in batches of 16, t = 0 and 0.5); a few seconds")
    args = ap.parse_args(argv)
    if args.quick:
        args.models, args.images, args.batch, args.ts = ["tiny"], [32], [16], [0.0, 0.5]
    elif args.json is None:
        args.json = DEFAULT_JSON
    if "ours" not in args.ways:
        args.ways = ["ours", *args.ways]

    def per_model(values: list[int], what: str) -> list[int]:
        if len(values) == 1:
            return values * len(args.models)
        if len(values) != len(args.models):
            ap.error(f"--{what} takes one value or one per model ({len(args.models)})")
        return values

    images, batches = per_model(args.images, "images"), per_model(args.batch, "batch")

    import torch

    threads_before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        res: dict = {**header("bench_layer_sweep.py", sys.argv[1:] if argv is None else argv, args.threads),
                     "protocol": "random-init model (adaLN gates redrawn), null label, mean pooling, all layers 0..depth; "
                                 "timing interleaved batch by batch and t by t; features compared before and after timing",
                     "models": {}}
        for name, n, b in zip(args.models, images, batches):
            res["models"][name] = run_model(name, n, b, tuple(args.ts), args.ways, args.check_images)
            save(res, args.json)
        finish(res)
    finally:
        torch.set_num_threads(threads_before)
    save(res, args.json)
    print(report(res), flush=True)
    return res


if __name__ == "__main__":
    main()
