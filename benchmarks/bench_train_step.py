"""Training-step throughput and peak memory: this toolkit's REPA step against a straightforward one.

Side by side in one run, each variant in a fresh subprocess (so peak memory is its own), timed
steps interleaved over rounds (A B C A B C ...) so machine noise hits all variants alike.

Variants (the model, data and optimizer settings are identical):

* ``reference``  the straightforward implementation, written here: attention without the fused
  kernel, REPA's per-sample Python loop in the projection loss, EMA as a Python loop over
  parameters, the frozen encoder run on every step, and a ``.item()`` host sync per step (logging);
* ``ours-online`` this toolkit's step (SDPA, vectorised loss, foreach EMA and optimizer, fused AdamW
  on CUDA, no host sync) with the encoder still run every step;
* ``ours-cached`` the same with the encoder's targets precomputed (the target cache);
* ``ours-compiled`` (``--compile``) the cached step under ``torch.compile``; compile time reported.

Also reported: the encoder's share of an online step, and on CUDA the model FLOP utilisation (MFU)
of the SiT training computation (forward + backward FLOPs counted by torch's FlopCounterMode)
against a measured bf16 matrix-product rate.

    python benchmarks/bench_train_step.py --models tiny SiT-S/2 --batch 8 --steps 3   # CPU
    python benchmarks/bench_train_step.py --models tiny tiny-128 --batch 32 --threads 1  # the tiny preset now and at its former width 128
    python benchmarks/bench_train_step.py --device cuda --models SiT-B/2 SiT-XL/2 --batch 256 --bf16 --compile
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VARIANTS = ("reference", "ours-online", "ours-cached")


def build(model_name: str, device: str, variant: str, encoder_name: str):
    import torch

    from train.run.config import preset, published_config
    from train.targets.encoders import load_encoder
    from train.models.loading import DiffusionTransformer

    if model_name in ("tiny", "tiny-128"):
        mcfg = preset("tiny").model
        if model_name == "tiny-128":  # the tiny preset as it was until 2026-11-29
            mcfg = dataclasses.replace(mcfg, hidden_size=128, num_heads=4, projector_dim=256)
        images_px, encoder_name = 32, "builtin-teacher"
    else:
        mcfg = published_config(model_name, "repa", input_size=32, in_channels=4, z_dims=(768,))
        images_px = 256
    if variant == "reference":
        mcfg.attn_impl = "math"
    torch.manual_seed(0)
    enc = load_encoder(encoder_name, grid=int(mcfg.num_tokens**0.5), random_init=True, device=device)
    if enc.dim != mcfg.z_dims[0]:
        mcfg.z_dims = (enc.dim,)
    model = DiffusionTransformer(mcfg).to(device)
    ema = DiffusionTransformer(mcfg).to(device).requires_grad_(False)
    ema.load_state_dict(model.state_dict())
    return model, ema, enc, images_px


def run_variant(args) -> dict:
    """One variant in this process: returns timings per step and peak memory."""
    import torch
    import torch.nn.functional as F

    from train.objectives import interpolants as itp
    from train.run.loop import ema_update
    from train.objectives.losses import denoising_loss, projection_loss

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    device = torch.device(args.device)
    variant = args.variant
    model, ema, enc, px = build(args.model, args.device, variant.replace("ours-compiled", "ours-cached"), args.encoder)
    cfg = model.cfg
    params = [p for p in model.parameters() if p.requires_grad]
    fused = device.type == "cuda" and variant != "reference"
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0, foreach=(variant != "reference" and not fused) or None,
                            fused=fused or None)
    b = args.batch
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (b, 3, px, px), dtype=torch.uint8, generator=g).to(device)
    x = torch.randn(b, cfg.in_channels, cfg.input_size, cfg.input_size, generator=g).to(device)
    labels = torch.randint(0, cfg.num_classes, (b,), generator=g).to(device)
    cached = [enc(images)] if variant in ("ours-cached", "ours-compiled") else None
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
    fwd = torch.compile(model) if variant == "ours-compiled" else model
    ema_p, model_p = list(ema.parameters()), list(model.parameters())

    def naive_proj_loss(zs, zs_tilde):
        loss = 0.0
        for z, zt in zip(zs, zs_tilde):
            for zj, ztj in zip(z, zt):
                loss = loss + (-(F.normalize(zj, dim=-1) * F.normalize(ztj, dim=-1)).sum(-1)).mean()
        return loss / (len(zs) * zs[0].shape[0])

    def step(i: int):
        t = torch.rand(b, generator=torch.Generator().manual_seed(i)).to(device)
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(i)).to(device)
        x_t = itp.interpolate(x, noise, t)
        targets = cached if cached is not None else [enc(images)]
        with amp:
            res = fwd(x_t, t, labels, return_hidden=(), project=True)
            den = denoising_loss(res.out, x, noise, t).mean()
            proj = naive_proj_loss(targets, res.zs) if variant == "reference" else projection_loss(res.zs, targets)
            loss = den + 0.5 * proj
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=variant != "reference")
        opt.step()
        opt.zero_grad(set_to_none=True)
        if variant == "reference":
            with torch.no_grad():
                for pe, p in zip(ema_p, model_p):
                    pe.mul_(0.9999).add_(p.detach(), alpha=1 - 0.9999)
            loss.item()  # per-step logging, as the reference loop does
        else:
            ema_update(ema_p, model_p, 0.9999)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    step(0)  # warm-up (and compilation)
    sync()
    first = time.perf_counter() - t0
    for i in range(1, args.warmup):
        step(i)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(args.steps):
        t0 = time.perf_counter()
        step(100 + i)
        sync()
        times.append(time.perf_counter() - t0)
    out = {"times": times, "first_step_s": first}
    if device.type == "cuda":
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    else:
        out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if args.count_flops:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as fc:
            with amp:
                res = model(x, torch.rand(b, device=device), labels, return_hidden=(), project=True)
                (res.out.float().pow(2).mean() + sum(z.float().mean() for z in res.zs)).backward()
        out["model_flops_per_step"] = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            enc(images)
        out["encoder_flops_per_step"] = fc.get_total_flops()
        enc_times = []
        for _ in range(3):
            sync()
            t0 = time.perf_counter()
            enc(images)
            sync()
            enc_times.append(time.perf_counter() - t0)
        out["encoder_s"] = sorted(enc_times)[1]
    return out


def bf16_rate(device: str) -> float:
    """Measured dense bf16 matrix-product rate (TFLOP/s): the MFU denominator."""
    import torch

    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * 10 / (time.perf_counter() - t0) / 1e12


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["tiny", "SiT-S/2"])
    ap.add_argument("--encoder", default="dinov2-vit-b", help="target encoder (random weights; same cost as real ones)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per variant per round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--variants", nargs="+", choices=VARIANTS + ("ours-compiled",),
                    help="run only these and ours-online, which counts the FLOPs (default: all; ours-compiled with --compile)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--count-flops", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return

    import torch

    chosen = set(args.variants or VARIANTS + (("ours-compiled",) if args.compile else ())) | {"ours-online"}
    variants = tuple(v for v in VARIANTS + ("ours-compiled",) if v in chosen)
    results: dict = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                     "device": args.device, "batch": args.batch, "bf16": args.bf16, "date": time.strftime("%Y-%m-%d"),
                     "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "models": {}}
    if args.device == "cuda":
        results["gpu"] = torch.cuda.get_device_name()
        results["bf16_tflops_measured"] = bf16_rate("cuda")
    for name in args.models:
        per: dict = {v: {"times": []} for v in variants}
        for r in range(args.rounds):
            for v in variants:
                cmd = [sys.executable, __file__, "--variant", v, "--model", name, "--device", args.device,
                       "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup),
                       "--threads", str(args.threads), "--encoder", args.encoder]
                cmd += ["--bf16"] if args.bf16 else []
                cmd += ["--count-flops"] if (r == 0 and v == "ours-online") else []
                proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
                if proc.returncode:
                    per[v]["error"] = proc.stderr.strip().splitlines()[-1][:300]
                    continue
                res = json.loads(proc.stdout.strip().splitlines()[-1])
                per[v]["times"] += res.pop("times")
                per[v].update({k: max(v_, per[v].get(k, 0)) if "peak" in k else v_ for k, v_ in res.items()})
                if args.json:  # each variant's raw times survive a later kill
                    args.json.write_text(json.dumps({**results, "partial": {name: per}}, indent=2))
        for v, d in per.items():
            if d["times"]:
                d["step_s"] = sorted(d["times"])[len(d["times"]) // 2]  # median
                d["images_per_s"] = args.batch / d["step_s"]
        ref = per.get("reference", {}).get("step_s")
        for v, d in per.items():
            if ref and d.get("step_s"):
                d["speedup_vs_reference"] = ref / d["step_s"]
        online = per["ours-online"]
        if "encoder_s" in online and online.get("step_s"):
            online["encoder_share"] = online["encoder_s"] / online["step_s"]
        if args.device == "cuda" and "model_flops_per_step" in online:
            for v, d in per.items():
                if d.get("step_s"):
                    d["mfu"] = online["model_flops_per_step"] / d["step_s"] / 1e12 / results["bf16_tflops_measured"]
        results["models"][name] = per
        if args.json:  # partial results survive a later failure
            args.json.write_text(json.dumps(results, indent=2))
        print(report(results), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def report(res: dict) -> str:
    lines = [f"device {res['device']}{' (' + res['gpu'] + ')' if 'gpu' in res else ''}, torch {res['torch']}, batch {res['batch']}, bf16 {res['bf16']}, {res['date']}",
             f"command: {res['command']}"]
    if "bf16_tflops_measured" in res:
        lines.append(f"measured bf16 matmul rate: {res['bf16_tflops_measured']:.0f} TFLOP/s")
    lines += ["", "| model | variant | step (s, median) | images/s | x reference | peak mem (GiB) | MFU | first step (s) |", "|---|---|---|---|---|---|---|---|"]
    for name, per in res["models"].items():
        for v, d in per.items():
            if "error" in d and not d.get("times"):
                lines.append(f"| {name} | {v} | error: {d['error']} | | | | | |")
                continue
            mem = d.get("peak_mem_gib", d.get("peak_rss_gib", float("nan")))
            mfu = f"{100 * d['mfu']:.1f}%" if "mfu" in d else "-"
            lines.append(f"| {name} | {v} | {d['step_s']:.3f} | {d['images_per_s']:.1f} | {d.get('speedup_vs_reference', float('nan')):.2f} | {mem:.2f} | {mfu} | {d['first_step_s']:.1f} |")
        online = per["ours-online"]
        if "encoder_share" in online:
            lines.append(f"| {name} | encoder share of an online step | {online['encoder_s']:.3f} s | | {100 * online['encoder_share']:.0f}% | | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
