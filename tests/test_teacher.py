"""The built-in scenes and teachers: per-pixel ground truth, the teachers' losses against their
definitions, caching keyed by every field (threads included), kinds checked on load."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from train.targets.encoders import load_encoder
from train.errors import UserError
from train.data.synthetic import MAX_SHAPES, SCENE_CLASSES, ScenesDataset, render_scenes
from train.targets.pretext import dense_loss, masked_loss, nt_xent, patchify, random_views
from train.targets.teacher import TEACHERS, TeacherConfig, TeacherViT, teacher_path, train_builtin_teacher

TINY = dict(width=32, depth=1, heads=2, steps=3, batch_size=8, n_train=64, warmup=1)


def test_scenes_are_deterministic_and_disjoint():
    a, b = ScenesDataset("train", n=40), ScenesDataset("train", n=40)
    assert torch.equal(a.images, b.images) and torch.equal(a.type_map, b.type_map)
    val = ScenesDataset("val", n=40)
    assert not torch.equal(a.images, val.images)
    assert a.labels.tolist() == [i % len(SCENE_CLASSES) for i in range(40)]
    assert torch.equal(ScenesDataset("train", n=80).images[:40], a.images)  # n only decides how many are kept


def test_scene_ground_truth_is_consistent():
    ds = ScenesDataset("train", n=200)
    assert ds.type_map.max() <= len(SCENE_CLASSES) and ds.depth_map.max() <= MAX_SHAPES
    assert torch.equal(ds.type_map > 0, ds.depth_map > 0)  # a shape covers a pixel in both maps or in neither
    # the label is the type of the first (largest) shape, painted at depth 1: where it is visible, the
    # type map says its type
    for i in range(len(ds)):
        back = ds.depth_map[i] == 1
        assert back.sum() > 10, i  # the largest shape stays visible
        assert (ds.type_map[i][back] == ds.labels[i] + 1).all()
    # boundaries lie where the depth map changes
    change = (ds.depth_map[:, :, 1:] != ds.depth_map[:, :, :-1])
    assert ds.boundary[:, :, :-1][change].all()
    # colour differs from the background where a shape is
    out = render_scenes(7, torch.arange(16).numpy(), 32)
    assert out["images"].dtype == torch.uint8 and out["images"].shape == (16, 3, 32, 32)


def test_patchify_order():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    p = patchify(x, 4)  # (2, 4, 16, 3)
    assert p.shape == (2, 4, 16, 3)
    assert torch.equal(p[1, 1, :, 2], x[1, 2, 0:4, 4:8].reshape(-1))  # patch row 0, column 1
    assert torch.equal(p[0, 2, :, 0], x[0, 0, 4:8, 0:4].reshape(-1))  # patch row 1, column 0


def test_dense_loss_equals_per_pixel_cross_entropies():
    torch.manual_seed(0)
    cfg = TeacherConfig(kind="dense", dataset="scenes", num_classes=8, **TINY)
    model = TeacherViT(cfg).eval()
    ds = ScenesDataset("train", n=4)
    x = ds.images.float() / 127.5 - 1
    got = dense_loss(model, x, ds.type_map, ds.depth_map, ds.boundary)
    out = model(x)  # (B, T, 16 * C): per pixel of each patch, the type, depth and boundary logits
    b, t = out.shape[:2]
    logits = out.reshape(b, 8, 8, 4, 4, -1).permute(0, 5, 1, 3, 2, 4).reshape(b, -1, 32, 32)  # (B, C, H, W)
    n_type, n_depth = 9, MAX_SHAPES + 1
    want = (F.cross_entropy(logits[:, :n_type], ds.type_map.long())
            + F.cross_entropy(logits[:, n_type:n_type + n_depth], ds.depth_map.long())
            + 0.5 * F.cross_entropy(logits[:, n_type + n_depth:], ds.boundary.long()))
    torch.testing.assert_close(got, want)


def test_masked_loss_only_counts_masked_patches():
    torch.manual_seed(0)
    cfg = TeacherConfig(kind="ssl", dataset="scenes", num_classes=8, **TINY)
    model = TeacherViT(cfg).eval()
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    mask = torch.zeros(3, 64, dtype=torch.bool)
    mask[:, ::2] = True
    loss = masked_loss(model, x, mask)
    # the masked patches' pixels are hidden from the model: changing them changes only the target
    x2 = x.clone()
    x2[:, :, 0:4, 0:4] = 0.3  # patch 0 is masked
    blank = x.clone()
    blank[:, :, 0:4, 0:4] = 0.0
    pred = model.head(model.forward_features(blank.masked_fill(
        mask.reshape(3, 1, 8, 1, 8, 1).expand(-1, 1, 8, 4, 8, 4).reshape(3, 1, 32, 32), 0.0), mask))
    target = patchify(x, 4).flatten(2)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    want = ((pred - target).pow(2).mean(-1) * mask).sum() / mask.sum()
    torch.testing.assert_close(loss, want)
    assert masked_loss(model, x2, mask) != loss


def test_nt_xent_equals_its_definition():
    """SimCLR eq. 1 by brute force: for every view i (2N of them) with positive j, -log of
    exp(cos(z_i, z_j) / tau) over the sum of exp(cos(z_i, z_k) / tau) for k != i; the mean over i."""
    torch.manual_seed(0)
    z1, z2, tau = torch.randn(5, 7), torch.randn(5, 7), 0.3
    z = torch.cat([z1, z2])
    n, total = 5, 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        cos = [float(F.cosine_similarity(z[i], z[k], dim=0)) for k in range(2 * n)]
        den = sum(torch.tensor(cos[k] / tau).exp() for k in range(2 * n) if k != i)
        total += float(-(torch.tensor(cos[j] / tau).exp() / den).log())
    assert float(nt_xent(z1, z2, tau)) == pytest.approx(total / (2 * n), rel=1e-5)
    assert float(nt_xent(z1, z1 * 3.0, 0.05)) < 0.01  # a view equal to its positive (up to scale) is found


def test_random_views_are_crops_flips_and_jitter():
    x = torch.rand(64, 3, 16, 16) * 2 - 1
    a = random_views(x, 0.4, torch.Generator().manual_seed(1))
    assert torch.equal(a, random_views(x, 0.4, torch.Generator().manual_seed(1)))  # one generator decides
    assert a.shape == x.shape and a.min() >= -1 and a.max() <= 1
    assert not torch.equal(a, random_views(x, 0.4, torch.Generator().manual_seed(2)))
    # geometry only moves pixels: a constant image stays constant (contrast and brightness shift the value)
    flat = random_views(torch.full((8, 3, 16, 16), 0.2), 0.4, torch.Generator().manual_seed(0))
    assert (flat.amax((1, 2, 3)) - flat.amin((1, 2, 3))).max() < 1e-5 and flat.std(0).mean() > 0
    # at crop_scale 1 a crop spans the whole width or height; a horizontal gradient keeps the sign of its slope
    # through the crop and the jitter's increasing affine change of value, and reverses it when flipped
    ramp = torch.linspace(-0.5, 0.5, 16).expand(256, 3, 16, 16).contiguous()
    v = random_views(ramp, 1.0, torch.Generator().manual_seed(3))
    row = v[:, 0, 8]                                                              # (256, 16)
    slope = row[:, -1] - row[:, 0]
    assert ((slope > 0).float().mean() - 0.5).abs() < 0.15  # flipped about half of the time


def test_cache_key_covers_every_field_and_threads(tmp_path):
    base = TeacherConfig(kind="ssl", dataset="scenes", num_classes=8, **TINY)
    keys = {base.key()} | {dataclasses.replace(base, **{f: v}).key() for f, v in
                           (("threads", 2), ("seed", 1), ("mask_ratio", 0.25), ("width", 16),
                                                   ("temperature", 0.5), ("crop_scale", 0.6))}
    assert len(keys) == 7
    path = train_builtin_teacher(base, tmp_path, progress=False)
    assert path == teacher_path(base, tmp_path)
    again = train_builtin_teacher(base, tmp_path / "b", progress=False)
    from safetensors.torch import load_file
    a, b = load_file(path), load_file(again)
    assert all(torch.equal(a[k], b[k]) for k in a)  # deterministic given the config


@pytest.mark.parametrize("kind", ["dense", "ssl", "contrastive", "supervised"])
def test_each_kind_trains_and_loads_as_an_encoder(tmp_path, kind):
    cfg = TeacherConfig(kind=kind, dataset="scenes", num_classes=8, **TINY)
    path = train_builtin_teacher(cfg, tmp_path, progress=False)
    enc = load_encoder(f"builtin-{kind}", weights=path)
    tokens = enc(ScenesDataset("val", n=5).images)
    assert tokens.shape == (5, 64, 32) and torch.isfinite(tokens).all()
    assert enc.provenance["teacher_config"]["kind"] == kind
    other = "dense" if kind != "dense" else "ssl"
    with pytest.raises(UserError, match=f"holds a {kind} teacher"):
        load_encoder(f"builtin-{other}", weights=path)


def test_bad_teacher_configs_are_one_line_errors():
    with pytest.raises(UserError, match="unknown teacher kind"):
        TeacherConfig(kind="dino")
    with pytest.raises(UserError, match="temperature 0.0 must be positive"):
        TeacherConfig(kind="contrastive", temperature=0.0)
    with pytest.raises(UserError, match="crop_scale 1.5 is the smallest area share"):
        TeacherConfig(kind="contrastive", crop_scale=1.5)
    with pytest.raises(UserError, match="dense teacher trains on the per-pixel ground truth"):
        TeacherConfig(kind="dense", dataset="shapes")
    assert set(TEACHERS) == {"fashion-ssl", "fashion-supervised", "fashion-contrastive", "fashion-contrastive-2x", "builtin-dense", "builtin-contrastive", "builtin-ssl", "builtin-supervised", "builtin-teacher"}


def test_each_built_in_dataset_has_its_own_evaluator():
    from train.evaluation.evaluate import EVALUATORS, EvaluatorConfig, evaluator_config

    assert evaluator_config("scenes").dataset == "scenes" and evaluator_config("scenes").num_classes == 8
    assert evaluator_config("shapes") == EvaluatorConfig()
    assert len({c.key() for c in EVALUATORS.values()}) == len(EVALUATORS)
    with pytest.raises(UserError, match="classifies"):
        evaluator_config("folder")


def test_scenes_plain_has_no_background_texture():
    from train.data.datasets import build_dataset

    plain, textured = build_dataset("scenes-plain", "val", n=8, size=16), build_dataset("scenes", "val", n=8, size=16)
    assert torch.equal(plain.type_map, textured.type_map)  # the same scenes, only the background differs
    bg = plain.type_map == 0
    assert not torch.equal(plain.images, textured.images)
    # without texture the background is a linear ramp: its second differences along a row vanish (up to rounding)
    row = plain.images[0, 0, 0].float()
    assert (row[2:] - 2 * row[1:-1] + row[:-2]).abs()[bg[0, 0, 1:-1]].max() <= 2


def test_a_second_process_waits_for_the_teacher_being_trained_instead_of_training_a_copy(tmp_path):
    """While another process holds the build lock of a teacher (it is training it), a caller waits;
    when the file appears it returns it without training (no sidecar of its own is written)."""
    import subprocess
    import sys
    import time

    cfg = TEACHERS["builtin-ssl"]
    path = teacher_path(cfg, tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from train.run.rundir import build_lock\n"
        f"p = Path({str(path)!r})\n"
        "with build_lock(p):\n"
        "    print('locked', flush=True); time.sleep(1.5); p.write_bytes(b'trained elsewhere')\n")],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    start = time.time()
    assert train_builtin_teacher(cfg, tmp_path, progress=False) == path
    waited = time.time() - start
    holder.wait()
    assert waited > 0.5 and path.read_bytes() == b"trained elsewhere"  # it waited, then read the other's file
    assert not path.with_suffix(".json").exists()  # and trained nothing itself
