"""The encoder-target cache beside a latent cache: stored tokens of every image and its mirror image
equal the online encoder's, training from them gives the same weights as encoding online (with
hflip), and targets of another encoder or unfinished ones are refused in one line.

Random-weight SD-VAE and built-in teacher: the architectures and code paths are the real ones."""

import dataclasses
from pathlib import Path
import json
import shutil

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from train.run.config import DataConfig, ModelConfig, TrainConfig
from train.data.datasets import (LatentCacheDataset, _load_encoders, build_latent_cache, build_target_cache, encode_main,
                        open_target_cache, target_dir)
from train.targets.encoders import TeacherConfig
from train.errors import UserError
from train.data.latents import SDVAECodec
from train.run.loop import step_generator, train

SIZE, GRID, N, B = 32, 2, 8, 4  # 32 px images -> 4x4 latents -> SiT patch 2 -> 2x2 tokens; shards of B images

# Exactness: on CPU an encoder's tokens of an image can differ in the last bits with the batch shape
# it is computed in (a batch of 1 takes another GEMM path), so the caches are built in batches of B,
# the training batch size, and the online references are computed in the same batches.


@pytest.fixture(scope="module")
def latent_cache(tmp_path_factory):
    """A latent cache of 8 random images, first made without mirrored latents, then completed with
    ``hflip=True`` (the path that adds them to existing shards)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("imgs")
    g = torch.Generator().manual_seed(0)
    for c in ("cat", "dog"):
        (root / c).mkdir()
        for i in range(N // 2):
            arr = torch.randint(0, 256, (40, 36, 3), generator=g, dtype=torch.uint8).numpy()
            Image.fromarray(arr).save(root / c / f"{i}.png")
    torch.manual_seed(0)
    vae = SDVAECodec(random_init=True)
    out = tmp_path_factory.mktemp("cache")
    build_latent_cache(root, out, size=SIZE, shard_size=B, codec=vae, progress=False)
    assert not LatentCacheDataset(out, size=SIZE).has_flips
    build_latent_cache(root, out, size=SIZE, shard_size=B, codec=vae, progress=False, hflip=True)
    ds = LatentCacheDataset(out, size=SIZE)
    assert ds.has_flips
    mean_f, std_f = vae.moments(ds.images.flip(-1))
    flip = torch.tensor([True, False] * (N // 2))
    mean, std = ds.moments(torch.arange(N), flip)
    torch.testing.assert_close(mean, torch.where(flip[:, None, None, None], mean_f, ds.mean), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(std, torch.where(flip[:, None, None, None], std_f, ds.std), rtol=1e-4, atol=1e-5)
    return out


def copy_cache(src, dst):
    """The latent cache without any stored targets."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("targets_*"))
    return dst


def teacher(seed: int = 0, grid: int = GRID):
    """The built-in teacher as the trainer builds it for ``seed`` (random weights)."""
    return _load_encoders(["builtin-teacher"], None, grid, "cpu", True, seed)[0]


def config(root, **kw) -> TrainConfig:
    return TrainConfig(
        model=ModelConfig(name="SiT-T/2", input_size=SIZE // 8, in_channels=4, num_classes=2, depth=2, hidden_size=32,
                          num_heads=2, encoder_depth=1, z_dims=(TeacherConfig().width,), projector_dim=64),
        data=DataConfig(dataset="latents", root=str(root), image_size=SIZE, codec="sd-vae", random_init_vae=True, hflip=True),
        encoders=("builtin-teacher",), random_init_encoders=True, proj_coeff=0.5, lr=1e-3, batch_size=B, steps=2,
        ema_decay=0.9, ckpt_every=2, log_every=1, device="cpu", threads=1, **kw)


def final(run) -> dict:
    return torch.load(run / "checkpoints" / "latest.pt", weights_only=True)


def final_init(run) -> dict:
    return torch.load(run / "checkpoints" / "step_0000000.pt", weights_only=True)["model"]


def assert_same_weights(a, b):
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)


def test_stored_targets_equal_online_encoder_outputs(latent_cache, tmp_path):
    """float32: bitwise equal to the encoder on the image / its mirror image; float16: the same
    tokens rounded to float16 (what the in-memory cache holds)."""
    torch.set_num_threads(1)
    images = LatentCacheDataset(latent_cache, size=SIZE).images
    enc = teacher()
    online = torch.cat([enc(images[s:s + B]) for s in range(0, N, B)])
    online_flip = torch.cat([enc(images[s:s + B].flip(-1)) for s in range(0, N, B)])
    torch.testing.assert_close(online, enc(images), rtol=1e-5, atol=1e-5)  # any batching: float32 rounding only
    # the command line (seeded random teacher, as the trainer makes it) into the shared cache
    argv = ["targets", "--cache", str(latent_cache), "--encoders", "builtin-teacher", "--grid", str(GRID),
            "--random-init-encoders", "--seed", "0", "--dtype", "float32", "--batch-size", str(B)]
    assert encode_main(argv) == 0
    info = json.loads((target_dir(latent_cache, "builtin-teacher") / "encoder.json").read_text())
    assert info["grid"] == GRID and info["dtype"] == "float32" and info["provenance"]["weights"] == "random-init"
    stored = open_target_cache(latent_cache, enc)
    idx = torch.arange(N)
    assert torch.equal(stored.gather(idx), online)
    assert torch.equal(stored.gather(idx, torch.ones(N, dtype=torch.bool)), online_flip)
    flip = torch.tensor([True, False, False, True, True, False, True, False])
    perm = torch.tensor([7, 0, 3, 5, 1, 6, 2, 4])  # rows of both shards, in any order
    expect = torch.where(flip[:, None, None], online_flip[perm], online[perm])
    assert torch.equal(stored.gather(perm, flip), expect)
    # rerunning is a no-op (finished shards are kept)
    shard = target_dir(latent_cache, "builtin-teacher") / "shard_00000.safetensors"
    before = shard.stat().st_mtime_ns
    assert encode_main(argv) == 0 and shard.stat().st_mtime_ns == before

    half = copy_cache(latent_cache, tmp_path / "half")
    build_target_cache(half, [enc], batch_size=B, progress=False)
    stored16 = open_target_cache(half, enc)
    assert torch.equal(stored16.gather(perm, flip), expect.half().float())


def test_training_from_stored_targets_matches_online_targets(latent_cache, tmp_path):
    """hflip on: each sample's flip is drawn by the loop; the stored run reads the mirrored tokens
    for exactly those samples and ends with bitwise the weights of the run that encodes online."""
    torch.set_num_threads(1)
    if not (target_dir(latent_cache, "builtin-teacher") / "encoder.json").exists():
        build_target_cache(latent_cache, [teacher()], batch_size=B, dtype=torch.float32, progress=False)
    flips = torch.cat([torch.rand(B, generator=step_generator(0, s, stream=1)) < 0.5 for s in range(2)])
    assert flips.any() and not flips.all()  # both variants are used in these two steps

    train(config(latent_cache), tmp_path / "stored", progress=False)
    train(config(latent_cache, cache_targets=False), tmp_path / "online", progress=False)
    sources = {r: json.loads((tmp_path / r / "config.json").read_text())["target_sources"] for r in ("stored", "online")}
    assert sources == {"stored": ["stored"], "online": ["online"]}
    a, b = final(tmp_path / "stored"), final(tmp_path / "online")
    assert a["step"] == 2 and max((a["model"][k] - final_init(tmp_path / "stored")[k]).abs().max() for k in a["model"]) > 0
    assert_same_weights(a, b)

    # float16 stored targets give the weights of the in-memory float16 cache
    half = copy_cache(latent_cache, tmp_path / "half")
    train(config(half), tmp_path / "memory", progress=False)
    build_target_cache(half, [teacher()], batch_size=B, progress=False)
    train(config(half), tmp_path / "stored16", progress=False)
    assert json.loads((tmp_path / "memory" / "config.json").read_text())["target_sources"] == ["memory"]
    assert json.loads((tmp_path / "stored16" / "config.json").read_text())["target_sources"] == ["stored"]
    assert_same_weights(final(tmp_path / "memory"), final(tmp_path / "stored16"))


def test_mismatched_or_unfinished_target_cache_is_refused(latent_cache, tmp_path, capsys):
    torch.set_num_threads(1)
    root = copy_cache(latent_cache, tmp_path / "other")
    build_target_cache(root, [teacher(seed=1)], progress=False)  # another random init: other weights
    with pytest.raises(UserError, match="another builtin-teacher encoder") as e:
        train(config(root), tmp_path / "run", progress=False)
    assert "\n" not in str(e.value) and "python -m train.data targets" in str(e.value)
    with pytest.raises(UserError, match="another builtin-teacher encoder"):  # nor extended by another encoder
        build_target_cache(root, [teacher(seed=0)], progress=False)
    with pytest.raises(UserError, match="needs 1x1"):
        open_target_cache(root, teacher(seed=1, grid=1))
    # another dtype is not mixed in; an unfinished cache is refused, and the same command finishes it
    with pytest.raises(UserError, match="--dtype float16"):
        build_target_cache(root, [teacher(seed=1)], dtype=torch.float32, progress=False)
    (target_dir(root, "builtin-teacher") / "shard_00001.safetensors").unlink()
    with pytest.raises(UserError, match="incomplete"):
        open_target_cache(root, teacher(seed=1))
    argv = ["targets", "--cache", str(root), "--encoders", "builtin-teacher", "--grid", str(GRID), "--random-init-encoders"]
    assert encode_main(argv) == 2  # seed 0: not the encoder that made it
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    assert encode_main(argv + ["--seed", "1"]) == 0
    assert len(open_target_cache(root, teacher(seed=1))) == N
    # data.hflip on a latent cache without mirrored latents
    plain = tmp_path / "plain"
    plain.mkdir()
    shutil.copy(latent_cache / "manifest.csv", plain)
    for p in sorted(latent_cache.glob("shard_*.safetensors")):
        save_file({k: v for k, v in load_file(str(p)).items() if not k.endswith("_flip")}, str(plain / p.name))
    with pytest.raises(UserError, match="--hflip"):
        train(config(plain), tmp_path / "noflip", progress=False)


def _tiny_in_memory_repa() -> TrainConfig:
    """A 2-step REPA run on 32 in-memory shapes images with a random-init built-in teacher."""
    return TrainConfig(
        model=ModelConfig(name="SiT-T/4", input_size=16, in_channels=3, num_classes=10, depth=2, hidden_size=32,
                          num_heads=2, encoder_depth=1, z_dims=(64,)),
        data=DataConfig(dataset="shapes", image_size=16, n_train=32),
        encoders=("builtin-teacher",), random_init_encoders=True, batch_size=8, steps=2, log_every=1,
        ckpt_every=2, device="cpu", threads=1)


def test_runs_with_one_teacher_on_one_dataset_share_their_in_memory_targets(tmp_path, monkeypatch):
    """The in-memory target cache (a built-in dataset) is computed by the first run and linked by the
    next one (one file on disk, not one per run), and the run that reads it trains bitwise as the one
    that computed it; another teacher (here: another random init) gets its own file."""
    import train.targets.source as targets

    monkeypatch.setenv("REPA_CACHE", str(tmp_path / "cache"))
    cfg = _tiny_in_memory_repa()
    calls = []
    real = targets.TargetSource._encode_all
    monkeypatch.setattr(targets.TargetSource, "_encode_all", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    train(cfg, tmp_path / "a", progress=False)
    train(cfg, tmp_path / "b", progress=False)
    assert len(calls) == 1  # the second run encoded nothing
    shared = list((tmp_path / "cache" / "targets").glob("*.pt"))
    assert len(shared) == 1 and (tmp_path / "b" / "target_cache.pt").samefile(shared[0])
    a, b = (torch.load(tmp_path / r / "checkpoints" / "latest.pt", weights_only=True) for r in "ab")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    # another seed: random-init teachers are seeded by the run, so another teacher and its own file
    train(dataclasses.replace(cfg, seed=1), tmp_path / "c", progress=False)
    assert len(calls) == 2 and len(list((tmp_path / "cache" / "targets").glob("*.pt"))) == 2


def test_the_demo_caches_the_targets_once_before_its_runs(tmp_path, monkeypatch):
    """``probe.demo.task_targets`` (the graph's "targets" task) writes the shared cache a REPA run then
    links without encoding, and a run from that cache trains bitwise as one that encoded them itself."""
    import train.targets.source as targets
    from probe.demo import task_targets

    monkeypatch.setenv("REPA_CACHE", str(tmp_path / "cache"))
    cfg = _tiny_in_memory_repa()
    train(cfg, tmp_path / "alone", progress=False)  # encodes its own tokens
    (tmp_path / "cache" / "targets").rename(tmp_path / "first")
    path = Path(task_targets(cfg.to_dict()))
    assert path.parent == tmp_path / "cache" / "targets" and path.is_file()
    calls = []
    real = targets.TargetSource._encode_all
    monkeypatch.setattr(targets.TargetSource, "_encode_all", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    train(cfg, tmp_path / "run", progress=False)
    assert not calls and (tmp_path / "run" / "target_cache.pt").samefile(path)
    a, b = (torch.load(tmp_path / r / "checkpoints" / "latest.pt", weights_only=True) for r in ("alone", "run"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    vanilla = dataclasses.replace(cfg, encoders=(), proj_coeff=0.0, model=dataclasses.replace(cfg.model, z_dims=()))
    assert task_targets(vanilla.to_dict()) == "nothing to cache"
