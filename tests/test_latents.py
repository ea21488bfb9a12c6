"""Latent codecs: identity roundtrip, SD-VAE shapes and scale (random init, offline), weight errors."""

import time

import pytest
import torch

from train.errors import UserError
from train.data.latents import CODECS, IdentityCodec, SDVAECodec, build_codec, to_uint8


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_identity_roundtrip():
    codec = build_codec("identity")
    images = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    latents = codec.encode(images)
    assert latents.shape == (3, 3, 16, 16) and latents.min() >= -1 and latents.max() <= 1
    assert torch.equal(codec.decode(latents, uint8=True), images)
    assert torch.allclose(codec.decode(latents), images.float() / 127.5 - 1)
    assert codec.latent_shape(32) == (3, 32, 32)
    with pytest.raises(TypeError):
        codec.encode(images.float())


def test_registry():
    assert set(CODECS) == {"identity", "grey", "sd-vae"}
    assert isinstance(build_codec("identity"), IdentityCodec)
    with pytest.raises(UserError, match="identity, grey, sd-vae"):
        build_codec("vq-gan")


@pytest.mark.slow
def test_sd_vae_random_init(tmp_path):
    torch.manual_seed(0)
    codec = build_codec("sd-vae", random_init=True)
    assert not any(p.requires_grad for p in codec.parameters()) and not codec.train().training
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    mean, std = codec.moments(images)
    latents = codec.encode(images, sample=False)
    assert latents.shape == (2, 4, 8, 8) == (2, *codec.latent_shape(64))
    assert torch.allclose(latents, mean * 0.18215)  # scale applied exactly once
    gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    sampled = codec.encode(images, generator=gen())
    assert torch.allclose(sampled, codec.from_moments(mean, std, generator=gen()))
    assert not torch.allclose(sampled, latents)
    decoded = codec.decode(latents)
    expected = codec.dec_vae.decode(latents / 0.18215).sample.clamp(-1, 1)
    assert decoded.shape == (2, 3, 64, 64) and torch.allclose(decoded, expected)
    assert torch.equal(codec.decode(latents, uint8=True), to_uint8(decoded))
    with pytest.raises(UserError, match="multiple of 8"):
        codec.encode(torch.zeros(1, 3, 60, 60, dtype=torch.uint8))

    codec.enc_vae.save_pretrained(tmp_path / "vae")
    local = SDVAECodec(encoder=str(tmp_path / "vae"), decoder=str(tmp_path / "vae"))
    assert local.enc_vae is local.dec_vae
    assert torch.allclose(local.encode(images, sample=False), latents, atol=1e-5)


def test_missing_weights_fail_fast(tmp_path):
    start = time.time()
    for source in ("stabilityai/sd-vae-ft-mse", str(tmp_path / "no-such-dir")):
        with pytest.raises(UserError, match="HF_HUB_OFFLINE=1") as err:
            SDVAECodec(encoder=source, decoder=source)
        assert "\n" not in str(err.value)
    assert time.time() - start < 5
