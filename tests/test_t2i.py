"""Text-to-image REPA on the MMDiT: the captioned data (built-in and the MS-COCO feature folder),
training REPA and vanilla from the CLI through the same loop, exact resume after kill -9."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from test_train import kill_9_and_resume, weights
from train.captions import CAPTION_LEN, CONTEXT_DIM, CocoFeatures
from train.cli import main_train
from train.data import build_dataset
from train.errors import UserError
from train.mmdit import MMDiT
from train.models import load

TINY = ["--preset", "tiny-t2i", "--no-progress", "--threads", "1", "--set", "random_init_encoders=true", "model.depth=2",
        "model.hidden_size=32", "model.num_heads=2", "model.encoder_depth=1", "model.projector_dim=32", "data.n_train=64",
        "batch_size=8", "log_every=1", "sample_every=0"]


def test_builtin_captions_describe_the_images():
    ds = build_dataset("captioned-scenes", "train", size=16, n=64)
    assert ds.contexts.shape == (64, CAPTION_LEN, CONTEXT_DIM) and ds.null_context.shape == (CAPTION_LEN, CONTEXT_DIM)
    for cap, label, tm in zip(ds.captions, ds.labels, ds.base.type_map):
        words = cap.split()
        assert words[:3] == ["a", "large", ds.classes[int(label)]]  # the labelled (largest) shape first
        named = set(words[5::3])  # the other shapes
        assert named <= {ds.classes[int(v) - 1] for v in tm.unique() if v > 0}  # only shapes that are visible
    assert len(set(ds.captions)) > 8  # captions say more than the class
    same = [i for i in range(64) if ds.captions[i] == ds.captions[0]]
    assert all(torch.equal(ds.contexts[i], ds.contexts[0]) for i in same)
    assert not torch.equal(ds.null_context, ds.contexts[0])
    again = build_dataset("captioned-scenes", "train", size=16, n=64)
    assert torch.equal(again.contexts, ds.contexts) and torch.equal(again.null_context, ds.null_context)  # fixed embeddings
    shapes = build_dataset("captioned-shapes", "train", size=16, n=8)
    assert shapes.captions[0] == f"a {shapes.classes[int(shapes.labels[0])]}"


def coco_folder(root, n=2, captions=(2, 1), width=12, tokens=5):
    """A miniature U-ViT/REPA MS-COCO feature folder (16 px images, 2x2 latents)."""
    d = root / "train"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    np.save(root / "empty_context.npy", rng.standard_normal((tokens, width)).astype(np.float32))
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(d / f"{i}.png")
        np.save(d / f"{i}.npy", rng.standard_normal((8, 2, 2)).astype(np.float32))
        for k in range(captions[i]):
            np.save(d / f"{i}_{k}.npy", rng.standard_normal((tokens, width)).astype(np.float32))
    return root


def test_coco_feature_folder(tmp_path):
    root = coco_folder(tmp_path / "coco")
    ds = build_dataset("coco-features", "train", root=root)
    assert isinstance(ds, CocoFeatures) and len(ds) == 3 and ds.pairs == [(0, 0), (0, 1), (1, 0)]
    image, ctx = ds[1]
    assert image.shape == (3, 16, 16) and image.dtype == torch.uint8
    assert torch.equal(ctx, torch.from_numpy(np.load(root / "train" / "0_1.npy")))
    mean, std = ds.moments(torch.tensor([2, 0]))
    m = np.load(root / "train" / "1.npy")
    assert torch.equal(mean[0], torch.from_numpy(m[:4])) and torch.allclose(std[0], torch.from_numpy(np.exp(0.5 * m[4:])))
    assert ds.null_context.shape == (5, 12)


@pytest.mark.parametrize("damage, message", [
    (lambda r: (r / "train" / "1_0.npy").unlink(), "1_0.npy is missing"),
    (lambda r: np.save(r / "train" / "0_1.npy", np.zeros((5, 10), np.float32)), "0_1.npy holds"),
    (lambda r: (r / "empty_context.npy").unlink(), "empty_context.npy is missing"),
    (lambda r: (r / "train" / "0.npy").unlink(), "0.npy is missing"),
])
def test_bad_feature_folder_is_one_line(tmp_path, damage, message):
    root = coco_folder(tmp_path / "coco")
    damage(root)
    with pytest.raises(UserError, match=message) as e:
        build_dataset("coco-features", "train", root=root)
    assert "\n" not in str(e.value)


def test_bad_feature_folder_from_the_cli_writes_nothing(tmp_path, capsys):
    root = coco_folder(tmp_path / "coco")
    (root / "train" / "1_0.npy").unlink()
    out = tmp_path / "run"
    code = main_train(TINY + ["data.dataset=\"coco-features\"", f"data.root=\"{root}\"", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and "1_0.npy is missing" in err[0]
    assert not (out / "checkpoints").exists() and not (out / "config.json").exists()


def test_mismatched_caption_width_is_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main_train(TINY + ["model.context_dim=16", "--steps", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.context_dim=32" in err[0]
    assert not (out / "checkpoints").exists()


def test_two_step_repa_and_vanilla_side_by_side(tmp_path):
    """The CLI trains REPA and vanilla MMDiTs on captions through the same loop; checkpoints load and sample."""
    out = tmp_path / "pair"
    assert main_train(TINY + ["--steps", "2", "--ckpt-every", "1", "--side-by-side", "--out", str(out)]) == 0
    for name in ("repa", "vanilla"):
        m = pd.read_json(out / name / "metrics.jsonl", lines=True)
        assert list(m["step"]) == [1, 2] and np.isfinite(m["denoise_loss"]).all()
        assert (m["proj_loss"] != 0).all() == (name == "repa")
        model = load(out / name / "checkpoints" / "latest.pt")
        assert isinstance(model, MMDiT) and len(model.projectors) == (name == "repa")
        ds = build_dataset("captioned-scenes", "train", size=16, n=8)
        assert torch.equal(model.null_context, ds.null_context)
        cfg = json.loads((out / name / "config.json").read_text())["config"]
        assert cfg["model"]["name"] == "MMDiT-d4/2" and cfg["data"]["dataset"] == "captioned-scenes"
    a, b = (weights(out / n / "checkpoints" / "step_0000000.pt")["model"] for n in ("repa", "vanilla"))
    assert all(torch.equal(a[k], b[k]) for k in b)  # the twins start from the same backbone


def test_kill_9_then_same_command_gives_identical_weights(tmp_path):
    ref, run = kill_9_and_resume(tmp_path, TINY + ["--steps", "12", "--ckpt-every", "2", "--set", "ckpt_series=\"all\""],
                                 kill_at=4, last=12)
    a, b = weights(ref / "checkpoints" / "latest.pt"), weights(run / "checkpoints" / "latest.pt")
    assert a["step"] == b["step"] == 12
    for part in ("model", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part])


def test_sampling_from_prompts_and_bad_prompt_files(tmp_path):
    """A built-in T2I checkpoint samples from a prompt file with text guidance; an empty file is one line."""
    from train.sampling_t2i import generate_t2i, read_prompts

    out = tmp_path / "run"
    assert main_train(TINY + ["--steps", "1", "--out", str(out)]) == 0
    model = load(out / "checkpoints" / "latest.pt")
    (tmp_path / "prompts.txt").write_text("a large star with a ring\n\na large circle\n")
    prompts = read_prompts(tmp_path / "prompts.txt")
    assert prompts == ["a large star with a ring", "a large circle"]
    for sampler in ("euler", "sde"):
        x = generate_t2i(model, prompts, sampler=sampler, steps=2, cfg_scale=4.0)
        assert x.shape == (2, 3, 16, 16) and torch.isfinite(x).all()
    more = generate_t2i(model, prompts + ["a large cross"], steps=2)  # sample i depends on (seed, i) and its prompt only
    torch.testing.assert_close(more[:2], generate_t2i(model, prompts, steps=2), rtol=1e-5, atol=1e-5)
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(UserError, match="holds no prompt"):
        read_prompts(tmp_path / "empty.txt")
    with pytest.raises(UserError, match="does not know"):
        generate_t2i(model, ["a purple elephant"], steps=1)
