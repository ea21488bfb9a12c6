"""Live alignment: the EMA model's alignment with a target encoder, measured while a run trains.

Every ``TrainConfig.align_every`` steps (and at step 0), on a fixed held-out probe set with fixed
noise, :class:`LiveAlignment` measures the EMA model's layers ``align_layers`` at the REPA times
``align_ts`` against the encoder ``align_encoder`` (default: the run's first target encoder; a
vanilla run names the encoder its REPA twin uses, ``train.run.cli.as_vanilla`` keeps it):

* ``cknna``: mean-pooled CKNNA (the paper's protocol: null label, clip at the 0.95 quantile, L2
  normalise, k = 10, ``train.evaluation.metrics.cknna`` in ``reference`` mode);
* ``cknna_token``: token-level CKNNA on ``align_token_samples`` (image, token) pairs
  (``train.evaluation.probe_set.token_pairs``; the encoder's tokens resampled to the model's grid);
* ``lds``: iREPA's local-vs-distant similarity of the layer's tokens (``train.evaluation.metrics.spatial_metrics``,
  r_near 1, r_far scaled to the grid), averaged over the images;
* ``linear_probe``: the paper's linear probe (``train.evaluation.linear_probe.probe_accuracy``: 90 epochs,
  one batch, lr 1e-3) fitted on ``align_train_images`` training images and scored on the probe set
  (0 train images: skipped).

The images (``train.evaluation.probe_set.subset_indices`` of the ``val`` and ``train`` splits, seeded by
``align_seed``), the per-image noise (``train.evaluation.probe_set.image_noise``), the token pairs, the
preprocessing and the metric functions are the ones the offline probes use, so a logged value
equals ``probe.analyses.layer_sweep`` of the same EMA weights with the settings
:meth:`LiveAlignment.probe_settings` returns (a test checks it).  Values are logged to
``metrics.jsonl`` (and TensorBoard) as ``align/<metric>/layer<L>/t<t>``, with the seconds the
measurement took as ``align/seconds``.  The measurement draws no random numbers from the
training's generators and changes no weights: a run with it on trains bitwise as one without.
"""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor

from train.run.config import TrainConfig
from train.errors import UserError
from train.objectives.interpolants import interpolate
from train.evaluation.linear_probe import probe_accuracy
from train.evaluation.metrics import cknna, default_r_far, prepare, spatial_metrics
from train.evaluation.probe_set import image_noise, subset_indices, token_pairs
from train.targets.encoders import resample_tokens

K, Q, PROBE_EPOCHS, PROBE_BATCH, PROBE_LR, BATCH = 10, 0.95, 90, 16384, 1e-3, 64  # the offline probes' defaults


def _split(cfg: TrainConfig, split: str, n: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """(dataset indices, uint8 images, labels) of ``n`` images of ``split`` drawn by ``seed``."""
    from train.data.datasets import build_dataset

    if cfg.data.dataset == "latents":
        raise UserError("live alignment needs images for the target encoder, which a latent cache does not hold: set align_every=0 "
                        "and probe the checkpoints with repa-probe")
    kw = {"size": cfg.data.image_size, **({"root": cfg.data.root} if cfg.data.dataset == "folder" else {})}
    try:
        data = build_dataset(cfg.data.dataset, split, **kw)
    except (UserError, OSError, FileNotFoundError) as e:
        raise UserError(f"live alignment reads the {split!r} split of {cfg.data.dataset}, which could not be opened ({e}): "
                        "add that split or set align_every=0") from None
    idx = subset_indices(len(data), n, seed)
    if isinstance(getattr(data, "images", None), Tensor):
        return idx, data.images[idx], data.labels[idx]
    items = [data[int(i)] for i in idx]
    return idx, torch.stack([im for im, _ in items]), torch.tensor([int(y) for _, y in items])


class LiveAlignment:
    """The probe set, the encoder's features of it, and the measurement (module docstring)."""

    def __init__(self, cfg: TrainConfig, codec, device):
        from train.targets.encoders import load_encoder

        self.cfg, self.codec, self.device = cfg, codec, device
        m = cfg.model
        self.layers = list(cfg.align_layers) or [m.encoder_depth]
        self.ts = [float(t) for t in cfg.align_ts]
        self.grid = math.isqrt(m.num_tokens)
        self.encoder_name = cfg.align_encoder or (cfg.encoders[0] if cfg.encoders else "")
        if not self.encoder_name:
            raise UserError("align_every needs an encoder to align with: set align_encoder=NAME (the encoder a REPA run would use)")
        with torch.random.fork_rng():  # random-init encoders (tests) drawn as the loop draws them
            torch.manual_seed(cfg.seed)
            encoder = load_encoder(self.encoder_name, device=device, random_init=cfg.random_init_encoders)  # native grid, as offline
        seed = cfg.align_seed
        self.idx, images, self.labels = _split(cfg, "val", cfg.align_images, seed)
        if len(self.idx) <= K:
            raise UserError(f"live alignment has {len(self.idx)} probe images for k={K} neighbours: set align_images above {K}")
        self.x, self.noise = self._latents(self.idx, images)
        self.pairs = token_pairs(len(self.idx), m.num_tokens, cfg.align_token_samples, seed)
        enc_pooled, enc_tokens = [], []
        with torch.no_grad():
            for s in range(0, len(images), BATCH):
                tok = encoder(images[s:s + BATCH].to(device)).float()            # (B, T_enc, D_enc)
                enc_pooled.append(tok.mean(1).cpu())                              # (B, D_enc)
                enc_tokens.append(resample_tokens(tok, self.grid).cpu())          # (B, T, D_enc)
        self.enc_pooled = prepare(torch.cat(enc_pooled), Q)                       # (N, D_enc)
        grid_tokens = torch.cat(enc_tokens)                                        # (N, T, D_enc)
        self.enc_pairs = prepare(grid_tokens[self.pairs[:, 0], self.pairs[:, 1]], Q)  # (M, D_enc)
        self.r_far = default_r_far(self.grid)
        self.encoder_lds = spatial_metrics(grid_tokens, ("lds",), 1, self.r_far)["lds"].mean().item()
        self.train_set = None
        if cfg.align_train_images:
            t_idx, t_images, t_labels = _split(cfg, "train", cfg.align_train_images, seed)
            self.train_set = (*self._latents(t_idx, t_images), t_labels)

    def _latents(self, idx: Tensor, images: Tensor) -> tuple[Tensor, Tensor]:
        x = torch.cat([self.codec.encode(images[s:s + BATCH].to(self.device), sample=False) for s in range(0, len(images), BATCH)])
        return x, image_noise(idx, tuple(x.shape[1:]), self.cfg.align_seed).to(self.device)

    def probe_settings(self) -> dict:
        """The ``probe.analyses.ProbeConfig`` fields under which an offline probe measures the same numbers."""
        c = self.cfg
        return {"dataset": c.data.dataset, "split": "val", "n_images": c.align_images, "train_split": "train",
                "n_train": c.align_train_images, "ts": tuple(self.ts), "layers": tuple(self.layers), "k": K, "q": Q,
                "pooling": "mean", "label": "null", "seed": c.align_seed, "token_samples": c.align_token_samples,
                "metrics": ("cknna", "cknna_token", "lds") + (("linear_probe",) if c.align_train_images else ()),
                "probe_epochs": PROBE_EPOCHS, "probe_batch_size": PROBE_BATCH, "probe_lr": PROBE_LR, "batch_size": BATCH}

    @torch.no_grad()
    def _features(self, model, x: Tensor, noise: Tensor, keep_tokens: bool) -> tuple[Tensor, list]:
        """Mean-pooled hidden states (L, T, N, D) and, with ``keep_tokens``, per (layer, t) the sampled
        tokens (M, D) and the per-image LDS (N,)."""
        from train.models.loading import predict

        pooled = torch.zeros(len(self.layers), len(self.ts), len(x), model.cfg.hidden_size)
        kept = [[([], []) for _ in self.ts] for _ in self.layers]
        for s in range(0, len(x), BATCH):
            xb, nb = x[s:s + BATCH], noise[s:s + BATCH]
            lo, hi = torch.searchsorted(self.pairs[:, 0].contiguous(), torch.tensor([s, s + len(xb)])).tolist()
            pick = self.pairs[lo:hi]
            for ti, t in enumerate(self.ts):
                out = predict(model, interpolate(xb, nb, t), t, None, return_hidden=self.layers, head=False)
                for li, layer in enumerate(self.layers):
                    h = out.hidden[layer]                                          # (B, T, D)
                    pooled[li, ti, s:s + len(xb)] = h.mean(1).float().cpu()
                    if keep_tokens:
                        kept[li][ti][0].append(h[pick[:, 0] - s, pick[:, 1]].float().cpu())
                        kept[li][ti][1].append(spatial_metrics(h, ("lds",), 1, self.r_far)["lds"].cpu())
        return pooled, kept

    def __call__(self, model, step: int) -> dict:
        """The logged record of the EMA ``model`` at ``step``: ``{"align/<metric>/layer<L>/t<t>": value}``."""
        start = time.perf_counter()
        was_training = model.training
        model.eval()
        pooled, kept = self._features(model, self.x, self.noise, keep_tokens=True)
        rec = {}
        for li, layer in enumerate(self.layers):
            for ti, t in enumerate(self.ts):
                key = f"layer{layer}/t{t:g}"
                rec[f"align/cknna/{key}"] = cknna(prepare(pooled[li, ti], Q), self.enc_pooled, k=K)
                rec[f"align/cknna_token/{key}"] = cknna(prepare(torch.cat(kept[li][ti][0]), Q), self.enc_pairs, k=K)
                rec[f"align/lds/{key}"] = torch.cat(kept[li][ti][1]).mean().item()
        if self.train_set is not None:
            x_tr, n_tr, y_tr = self.train_set
            train_pooled, _ = self._features(model, x_tr, n_tr, keep_tokens=False)
            acc = probe_accuracy(train_pooled.flatten(0, 1), y_tr, pooled.flatten(0, 1), self.labels,
                                 epochs=PROBE_EPOCHS, batch_size=PROBE_BATCH, lr=PROBE_LR, seed=self.cfg.align_seed)
            for i, a in enumerate(acc.tolist()):
                li, ti = divmod(i, len(self.ts))
                rec[f"align/linear_probe/layer{self.layers[li]}/t{self.ts[ti]:g}"] = a
        if step == 0:
            rec["align/lds/encoder"] = self.encoder_lds
        model.train(was_training)
        rec["align/seconds"] = time.perf_counter() - start
        return rec
