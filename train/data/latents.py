"""Latent codecs: the one place where images become model inputs and back, scale and shift included.

A :class:`Codec` maps uint8 images ``(B, 3, H, W)`` to *scaled* latents
``(B, channels, H / downsample, W / downsample)`` and back to images in ``[-1, 1]``:

    latents = (z - shift) * scale          z = latents / scale + shift

where ``z`` is a sample (or the mean) of the codec's posterior. :meth:`Codec.moments` returns the
unscaled posterior ``(mean, std)`` so a latent cache can store it once and draw a fresh sample at
every step with :meth:`Codec.from_moments` (what REPA does); :meth:`Codec.encode` does both at once.

* :class:`IdentityCodec` -- pixel space, ``x / 127.5 - 1``, 3 channels, downsample 1.
* :class:`SDVAECodec` -- the Stable Diffusion VAE (diffusers ``AutoencoderKL``), 4 channels,
  downsample 8, scale 0.18215, shift 0; encoder and decoder weights may differ (REPA encodes with
  ``sd-vae-ft-mse`` and decodes with ``sd-vae-ft-ema``).

Weights are looked up locally first (a directory, then the Hugging Face cache); a download is only
tried when ``HF_HUB_OFFLINE`` is unset and the hub answers within seconds, so a machine without
internet gets one :class:`~train.errors.UserError` line at once instead of a 30-50 s timeout.
The helpers :func:`hub_offline`, :func:`download_possible` and :func:`hf_cached_file` are shared
with :mod:`train.targets.encoders`.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from train.errors import UserError

# ----------------------------------------------------------------------------------------------
# Weights on the hub
# ----------------------------------------------------------------------------------------------

HF_ENDPOINT = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
WEIGHTS_HELP = "pass a local directory/file, or copy a Hugging Face cache that holds it and set HF_HUB_OFFLINE=1"


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set (read now, not at import); it also blocks URL downloads."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def download_possible(url: str = HF_ENDPOINT, timeout: float = 3.0) -> bool:
    """False when offline, or when ``url``'s server does not answer within ``timeout`` seconds
    (any HTTP status counts as an answer; proxy variables are honoured)."""
    if hub_offline():
        return False
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False
    return True


def hf_cached_file(repo_id: str, filenames: Iterable[str]) -> str | None:
    """Path of the first of ``filenames`` of ``repo_id`` present in the local HF cache, else None."""
    from huggingface_hub import try_to_load_from_cache

    for name in filenames:
        try:
            path = try_to_load_from_cache(repo_id, name)
        except ValueError:  # not a valid repo id (e.g. a path)
            return None
        if isinstance(path, str):
            return path
    return None


# ----------------------------------------------------------------------------------------------
# Codecs
# ----------------------------------------------------------------------------------------------


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[0, 255]`` -> float32 ``[-1, 1]``."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise TypeError(f"expected uint8 images (B, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    return images.float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float ``[-1, 1]`` -> uint8 ``[0, 255]`` (clamped, rounded)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class Codec(nn.Module):
    """Images <-> scaled latents. Subclasses set the attributes and implement the two hooks
    :meth:`moments` (unscaled posterior of images) and :meth:`_decode` (unscaled latents -> x)."""

    name: str
    channels: int
    downsample: int
    scale: float = 1.0
    shift: float = 0.0

    def latent_shape(self, height: int, width: int | None = None) -> tuple[int, int, int]:
        """``(C, h, w)`` of the latents of a ``height x width`` image (square by default)."""
        width = height if width is None else width
        if height % self.downsample or width % self.downsample:
            raise UserError(f"image size {height}x{width} is not a multiple of {self.downsample} "
                            f"— the {self.name} codec needs one; choose another image size")
        return self.channels, height // self.downsample, width // self.downsample

    def moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unscaled posterior ``(mean, std)`` of uint8 images."""
        raise NotImplementedError

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def from_moments(self, mean: torch.Tensor, std: torch.Tensor, sample: bool = True,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """Scaled latents from a posterior: a sample (``sample=True``) or its mean."""
        z = mean
        if sample:
            z = mean + std * torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return (z - self.shift) * self.scale

    def encode(self, images: torch.Tensor, sample: bool = True,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 images ``(B, 3, H, W)`` -> scaled latents ``(B, channels, H/ds, W/ds)``."""
        self.latent_shape(*images.shape[-2:])
        return self.from_moments(*self.moments(images), sample=sample, generator=generator)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, uint8: bool = False) -> torch.Tensor:
        """Scaled latents -> images, float in ``[-1, 1]`` or (``uint8=True``) uint8."""
        x = self._decode(latents / self.scale + self.shift).clamp(-1, 1)
        return to_uint8(x) if uint8 else x


class IdentityCodec(Codec):
    """Pixel space: latents are the images mapped to ``[-1, 1]``; the posterior has zero std."""

    name, channels, downsample = "identity", 3, 1

    def moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = to_float(images)
        return x, torch.zeros_like(x)

    def from_moments(self, mean: torch.Tensor, std: torch.Tensor, sample: bool = True,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        return (mean - self.shift) * self.scale  # deterministic: no noise draw

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        return z


class GreyCodec(Codec):
    """Pixel space for grey images (Fashion-MNIST): one channel, the mean of the three in ``[-1, 1]``
    (the three are equal for grey data); decoding repeats it into three channels.  Zero std."""

    name, channels, downsample = "grey", 1, 1

    def moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = to_float(images).mean(1, keepdim=True)                               # (B, 1, H, W)
        return x, torch.zeros_like(x)

    def from_moments(self, mean: torch.Tensor, std: torch.Tensor, sample: bool = True,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        return (mean - self.shift) * self.scale  # deterministic: no noise draw

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        return z.expand(-1, 3, -1, -1)                                           # (B, 3, H, W)


SD_VAE_CONFIG = dict(
    in_channels=3, out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512], layers_per_block=2, act_fn="silu",
    latent_channels=4, norm_num_groups=32, sample_size=256, scaling_factor=0.18215,
)
_VAE_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def load_vae(source: str) -> nn.Module:
    """diffusers ``AutoencoderKL`` from a local directory (also a pipeline directory with a
    ``vae/`` subfolder) or a hub name, never waiting on an unreachable network."""
    path = Path(source).expanduser()
    if path.is_dir():
        sub = "vae" if not (path / "config.json").exists() and (path / "vae" / "config.json").exists() else None
        kwargs = dict(subfolder=sub, local_files_only=True)
        where = str(path)
    elif hf_cached_file(source, ["config.json"]) and hf_cached_file(source, _VAE_FILES):
        kwargs, where = dict(local_files_only=True), source
    elif not path.exists() and source.count("/") == 1 and download_possible():
        kwargs, where = {}, source
    else:
        raise UserError(f"VAE weights {source!r} not found (no such diffusers directory, not in the HF cache, "
                        f"hub unreachable) — {WEIGHTS_HELP}")
    from diffusers import AutoencoderKL

    try:
        return AutoencoderKL.from_pretrained(where, **kwargs)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load the VAE from {where} ({first}) — {WEIGHTS_HELP}") from e


class SDVAECodec(Codec):
    """Stable Diffusion VAE: 4 latent channels, downsample 8, scale 0.18215, shift 0.

    ``encoder``/``decoder``: hub names or local diffusers directories (the same source is loaded
    once). ``random_init=True`` builds the SD-VAE architecture from :data:`SD_VAE_CONFIG` with
    random weights, offline (for tests). Parameters are frozen and the module stays in eval mode.
    """

    name, channels, downsample = "sd-vae", 4, 8
    scale, shift = 0.18215, 0.0

    def __init__(self, encoder: str = "stabilityai/sd-vae-ft-mse", decoder: str = "stabilityai/sd-vae-ft-ema",
                 random_init: bool = False) -> None:
        super().__init__()
        if random_init:
            from diffusers import AutoencoderKL

            self.enc_vae = AutoencoderKL(**SD_VAE_CONFIG)
            self.dec_vae = self.enc_vae
            self.sources = {"encoder": "random-init", "decoder": "random-init"}
        else:
            self.enc_vae = load_vae(encoder)
            self.dec_vae = self.enc_vae if decoder == encoder else load_vae(decoder)
            self.sources = {"encoder": encoder, "decoder": decoder}
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> SDVAECodec:
        return super().train(False)

    @torch.no_grad()
    def moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        device = next(self.enc_vae.parameters()).device
        posterior = self.enc_vae.encode(to_float(images).to(device)).latent_dist
        return posterior.mean, posterior.std

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.dec_vae.decode(z.to(next(self.dec_vae.parameters()).device)).sample


CODECS: dict[str, Callable[..., Codec]] = {"identity": IdentityCodec, "grey": GreyCodec, "sd-vae": SDVAECodec}
CODEC_CHANNELS = {"identity": 3, "grey": 1, "sd-vae": 4}  # latent channels per codec
PIXEL_CODECS = ("identity", "grey")


def codec_for_channels(channels: int) -> str:
    """The codec of a model with ``channels`` input channels: identity (3), grey (1), else sd-vae."""
    return {3: "identity", 1: "grey"}.get(int(channels), "sd-vae")


def build_codec(name: str, **kw) -> Codec:
    """Build the codec ``name`` (a key of :data:`CODECS`) with constructor keywords ``kw``."""
    if name not in CODECS:
        raise UserError(f"unknown codec {name!r} — choose one of: {', '.join(CODECS)}")
    return CODECS[name](**kw)
