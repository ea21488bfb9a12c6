"""Where the REPA targets of a batch come from: :class:`TargetSource` (stored cache, in-memory
cache or the encoder online) and the shuffled-target controls' :func:`class_partners` and
:func:`image_partners`."""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from train.run.checkpoints import atomic_save, read_checkpoint
from train.errors import UserError

Tensor = torch.Tensor


def class_partners(labels: Tensor, seed: int) -> Tensor:
    """For the ``target_shuffle="class"`` control: ``partner[i]``, another image of image ``i``'s class
    (a random cycle through each class's images, fixed by ``seed``; an image alone in its class is its
    own partner).  Targets read through it keep the class statistics of the teacher's tokens and lose
    everything specific to the image."""
    gen = torch.Generator().manual_seed(seed + 424_242)
    partner = torch.arange(len(labels))
    for c in labels.unique():
        members = (labels == c).nonzero().flatten()
        order = members[torch.randperm(len(members), generator=gen)]
        partner[order] = order.roll(-1)
    return partner


def image_partners(n: int, seed: int) -> Tensor:
    """For the ``target_shuffle="image"`` control: ``partner[i]``, another image of the whole set (one
    random cycle through all ``n`` images, fixed by ``seed``).  Targets read through it are the
    teacher's tokens of a random other image: they keep the tokens' overall statistics and lose every
    link to the image, its class included."""
    gen = torch.Generator().manual_seed(seed + 525_252)
    order = torch.randperm(n, generator=gen)
    partner = torch.arange(n)
    partner[order] = order.roll(-1)
    return partner


def shared_target_file(encoders: list, images: Tensor, hflip: bool) -> Path:
    """Where the in-memory targets of ``encoders`` on ``images`` are shared between runs:
    ``$REPA_CACHE/targets/<digest>.pt``, the digest over each encoder's :func:`encoder_key` (its
    provenance and weights), the images' bytes and ``hflip``; runs with the same teacher and data
    (every seed and variant of a study) encode the training set once."""
    import hashlib

    from train.run.checkpoints import repa_cache_dir
    from train.targets.stored import encoder_key

    h = hashlib.sha256(repr(([encoder_key(e) for e in encoders], tuple(images.shape), str(images.dtype), hflip)).encode())
    h.update(images.detach().cpu().contiguous().numpy().tobytes())
    return repa_cache_dir() / "targets" / f"{h.hexdigest()[:24]}.pt"


def _link(src: Path, dst: Path) -> None:
    """Make ``dst`` the file ``src`` (a hard link, swapped in atomically; a plain copy across file
    systems); a failure leaves things as they were: sharing is an optimisation, never required."""
    import os
    import shutil

    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.link")
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except OSError:
        tmp.unlink(missing_ok=True)


class TargetSource:
    """Encoder patch tokens for the images of a batch: the one place that decides where they come from.

    With ``cache`` on, per encoder, the first of

    1. stored: ``targets_<encoder>/`` beside the latent cache ``stored_root`` (``python -m
       train.data targets``), checked against the encoder -- targets of another encoder (weights,
       grid, preprocessing) or unfinished ones are refused with a one-line :class:`UserError`;
    2. in memory: for in-memory ``images``, the tokens of every image (and, with ``hflip``, of its
       mirror image) computed once at the start as float16 (N, T, D) and kept in ``cache_file``, a
       hard link to the copy every run of these encoders on these images shares
       (:func:`shared_target_file`);
    3. online: the encoder runs on the batch's images every step (also with ``cache`` off).

    The loop flips images itself (``flip``: a bool per sample); the stored and in-memory sources
    pick the mirrored variant for exactly those samples, so every source gives the tokens of the
    image the encoder would see online.
    """

    def __init__(self, encoders: list, images: Tensor | None, cache: bool, device, batch: int = 256,
                 cache_file: Path | None = None, progress: bool = True, hflip: bool = False,
                 stored_root: Path | None = None):
        self.encoders, self.device = encoders, device
        self.partners: Tensor | None = None
        # per encoder: a StoredTargets, a (tokens, tokens_flip | None) pair held in memory, or None (online)
        self.sources: list = [None] * len(encoders)
        if not (cache and encoders):
            return
        if stored_root is not None:
            from train.data.datasets import open_target_cache

            self.sources = [open_target_cache(stored_root, e) for e in encoders]
        todo = [j for j, src in enumerate(self.sources) if src is None]
        if not todo or images is None:
            return
        shared = shared_target_file(encoders, images, hflip) if cache_file is not None else None
        if shared is not None and shared.exists() and not cache_file.exists():
            _link(shared, cache_file)  # another run of these encoders on these images computed them
        saved = self._read_cache_file(cache_file, encoders)
        tokens = self._as_list(saved.get("tokens"))
        flipped = self._as_list(saved.get("tokens_flip"))
        fits = [lambda t, enc=enc: isinstance(t, Tensor) and t.is_floating_point() and t.dim() == 3
                and t.shape[0] == len(images) and t.shape[2] == enc.dim and bool(torch.isfinite(t).all()) for enc in encoders]
        if any(not fits[j](tokens[j]) or (hflip and not fits[j](flipped[j])) for j in todo):
            tokens, flipped = [None] * len(encoders), [None] * len(encoders)
            for j in todo:
                tokens[j] = self._encode_all(encoders[j], images, batch, progress)
                if hflip:
                    flipped[j] = self._encode_all(encoders[j], images, batch, progress, flip=True)
            if cache_file is not None:
                atomic_save({"tokens": tokens, "tokens_flip": flipped,
                             "encoders": [e.provenance for e in encoders]}, cache_file)
        for j in todo:
            self.sources[j] = (tokens[j], flipped[j] if hflip else None)
        if shared is not None and cache_file.exists() and not (shared.exists() and shared.samefile(cache_file)):
            _link(cache_file, shared)  # offer them to the next run

    @staticmethod
    def _read_cache_file(cache_file: Path | None, encoders: list) -> dict:
        """The in-memory cache saved by an earlier start of this run; ``{}`` (rebuilt) when it is
        missing, unreadable (truncated, not plain data) or made by other encoders."""
        if cache_file is None or not cache_file.exists():
            return {}
        try:
            saved = read_checkpoint(cache_file)
        except UserError:
            return {}
        if not isinstance(saved, dict) or saved.get("encoders") != [e.provenance for e in encoders]:
            return {}
        return saved

    def _as_list(self, saved) -> list:
        saved = list(saved) if isinstance(saved, (list, tuple)) else []
        return (saved + [None] * len(self.encoders))[:len(self.encoders)]

    def _encode_all(self, enc, images: Tensor, batch: int, progress: bool, flip: bool = False) -> Tensor:
        out = []
        for s in tqdm(range(0, len(images), batch), desc=f"targets {enc.name}{' (mirrored)' if flip else ''}",
                      disable=not progress, leave=False):
            x = images[s:s + batch]
            out.append(enc((x.flip(-1) if flip else x).to(self.device)).to("cpu", torch.float16))
        return torch.cat(out)

    @property
    def kinds(self) -> list[str]:
        """Where each encoder's targets come from: ``stored``, ``memory`` or ``online``."""
        return ["online" if s is None else "memory" if isinstance(s, tuple) else "stored" for s in self.sources]

    def __call__(self, idx: Tensor, images: Tensor, flip: Tensor | None = None) -> list[Tensor]:
        """Tokens of the images ``idx`` as the loop passes them (``images``, already flipped where ``flip``);
        with ``partners`` set (the shuffled control), the cached tokens of ``partners[idx]`` instead."""
        if self.partners is not None:
            idx = self.partners[idx.cpu()]
        out = []
        for enc, src in zip(self.encoders, self.sources):
            if src is None:
                out.append(enc(images))
            elif isinstance(src, tuple):
                plain, mirrored = src
                t = plain[idx] if flip is None else torch.where(flip.cpu()[:, None, None], mirrored[idx], plain[idx])
                out.append(t.to(self.device, torch.float32))
            else:
                out.append(src.gather(idx, flip).to(self.device))
        return out
