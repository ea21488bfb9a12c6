"""The SD-VAE latent cache: manifest-driven, resumable, refused when it belongs to another folder,
and trainable from (random-weight VAE: the architecture and code paths are the real ones)."""

import csv

import pytest
import torch
from PIL import Image

from train.run.config import DataConfig, ModelConfig, TrainConfig
from train.data.datasets import LatentCacheDataset, build_latent_cache, encode_main
from train.errors import UserError
from train.data.latents import SDVAECodec
from train.run.loop import train


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    g = torch.Generator().manual_seed(0)
    for c in ("cat", "dog"):
        (root / c).mkdir()
        for i in range(3):
            arr = torch.randint(0, 256, (80, 72, 3), generator=g, dtype=torch.uint8).numpy()
            Image.fromarray(arr).save(root / c / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return SDVAECodec(random_init=True)


def test_cache_matches_direct_encoding_and_resumes(folder, vae, tmp_path):
    out = tmp_path / "cache"
    build_latent_cache(folder, out, size=64, shard_size=4, codec=vae, progress=False)
    with open(out / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["file"] for r in rows] == ["cat/0.png", "cat/1.png", "cat/2.png", "dog/0.png", "dog/1.png", "dog/2.png"]
    assert [int(r["shard"]) for r in rows] == [0, 0, 0, 0, 1, 1]
    ds = LatentCacheDataset(out, size=64)
    assert ds.images.shape == (6, 3, 64, 64) and ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    mean, std = ds.moments(torch.tensor([0, 5]))
    ref_mean, ref_std = vae.moments(ds.images[[0, 5]])
    torch.testing.assert_close(mean, ref_mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(std, ref_std, rtol=1e-4, atol=1e-5)
    # resume: a finished shard is not recomputed, a missing one is
    (out / "shard_00001.safetensors").unlink()
    before = (out / "shard_00000.safetensors").stat().st_mtime_ns
    build_latent_cache(folder, out, size=64, shard_size=4, codec=vae, progress=False)
    assert (out / "shard_00000.safetensors").stat().st_mtime_ns == before
    assert len(LatentCacheDataset(out, size=64)) == 6
    with pytest.raises(UserError, match="another folder"):
        build_latent_cache(folder, out, size=64, shard_size=2, codec=vae, progress=False)


def test_incomplete_cache_is_one_line(folder, vae, tmp_path, capsys):
    out = tmp_path / "cache"
    build_latent_cache(folder, out, size=64, shard_size=4, codec=vae, progress=False)
    (out / "shard_00001.safetensors").unlink()
    with pytest.raises(UserError, match="incomplete"):
        LatentCacheDataset(out)
    from conftest import exit_code

    assert exit_code(encode_main, ["encode", "--root", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "\n" not in capsys.readouterr().err.strip()


def test_training_from_the_cache(folder, vae, tmp_path):
    out = tmp_path / "cache"
    build_latent_cache(folder, out, size=64, shard_size=4, codec=vae, progress=False)
    cfg = TrainConfig(
        model=ModelConfig(name="SiT-T/2", input_size=8, in_channels=4, num_classes=2, depth=2, hidden_size=32, num_heads=2),
        data=DataConfig(dataset="latents", root=str(out), image_size=64, codec="sd-vae", random_init_vae=True),
        encoders=(), proj_coeff=0.0, batch_size=4, steps=2, ckpt_every=2, log_every=1, device="cpu", threads=1)
    latest = train(cfg, tmp_path / "run", progress=False)
    assert torch.load(latest, weights_only=True)["step"] == 2
