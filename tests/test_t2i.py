"""Text-to-image REPA on the MMDiT: the captioned data (built-in and the MS-COCO feature folder),
training REPA and vanilla from the CLI through the same loop, exact resume after kill -9."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from test_train import kill_9_and_resume, weights
from train.data.captions import CAPTION_LEN, CONTEXT_DIM, CocoFeatures
from train.run.cli import main_train
from train.data.datasets import build_dataset
from train.errors import UserError
from train.models.mmdit import MMDiT
from train.models.loading import load

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


@pytest.fixture(scope="module")
def t2i_ckpt(tmp_path_factory):
    """The EMA checkpoint of a 2-step REPA run of the MMDiT on the built-in captioned scenes (from the CLI)."""
    out = tmp_path_factory.mktemp("t2i") / "run"
    assert main_train(TINY + ["--steps", "2", "--out", str(out)]) == 0
    return out / "checkpoints" / "latest.pt"


def test_sampling_from_prompts_and_bad_prompt_files(tmp_path, t2i_ckpt):
    """A built-in T2I checkpoint samples from a prompt file with text guidance; an empty file is one line."""
    from train.evaluation.sampling_t2i import generate_t2i, read_prompts

    model = load(t2i_ckpt)
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


# ----------------------------------------------------------------------------------------------
# repa-sample --prompts / --context-features
# ----------------------------------------------------------------------------------------------

PROMPTS = "a large star with a ring\na large circle\n"
SAMPLE = ["--steps", "2", "--batch-size", "8", "--seed", "3", "--device", "cpu", "--no-progress"]


def test_repa_sample_from_a_prompt_file(tmp_path, t2i_ckpt, capsys):
    """PNGs, the ADM .npz (labels = prompt index), the grid and the provenance, as class-conditional
    sampling; the images are generate_t2i's (same seeding), decoded; a rerun resumes."""
    from train.run.cli import main_sample
    from train.evaluation.evaluate import load_samples
    from train.data.latents import build_codec
    from train.evaluation.sampling_t2i import generate_t2i

    (tmp_path / "prompts.txt").write_text(PROMPTS)
    out = tmp_path / "samples"
    args = ["--ckpt", str(t2i_ckpt), "--out", str(out), "--prompts", str(tmp_path / "prompts.txt"), "--n", "5",
            "--cfg-scale", "4", *SAMPLE]
    assert main_sample(args) == 0
    assert capsys.readouterr().out.strip() == str(out / "samples_5x16x16x3.npz")
    assert (out / "grid.png").is_file() and len(list((out / "images").glob("*.png"))) == 5
    cfg = json.loads((out / "sample_config.json").read_text())
    assert cfg["prompts"] == ["a large star with a ring", "a large circle"] and cfg["labels"] == [0, 1]
    assert cfg["cfg_scale"] == 4.0 and cfg["steps"] == 2 and cfg["checkpoint"]["name"] == "MMDiT-d4/2" and cfg["git_revision"]
    images, labels = load_samples(out)
    assert labels.tolist() == [0, 1, 0, 1, 0]
    prompts = PROMPTS.split("\n")[:2]
    x = generate_t2i(load(t2i_ckpt), [prompts[i % 2] for i in range(5)], steps=2, cfg_scale=4.0, seed=3)
    assert torch.equal(images, build_codec("identity").decode(x, uint8=True))
    assert main_sample(args) == 0  # everything there: nothing sampled again
    (tmp_path / "other.txt").write_text("a large cross\n")
    assert main_sample(args[:4] + ["--prompts", str(tmp_path / "other.txt")] + args[6:]) == 2
    assert "other settings (labels, prompts)" in capsys.readouterr().err


def test_repa_sample_from_caption_features_equals_prompts(tmp_path, t2i_ckpt):
    """An .npy of caption features, (L, C) or (N, L, C), samples as the prompts they encode (SDE, guided)."""
    from train.run.cli import main_sample
    from train.evaluation.evaluate import load_samples
    from train.evaluation.sampling_t2i import caption_encoder

    feats = caption_encoder(load(t2i_ckpt))(["a large star with a ring", "a large circle"]).numpy()  # (2, L, C)
    np.save(tmp_path / "two.npy", feats)
    np.save(tmp_path / "one.npy", feats[1])
    (tmp_path / "prompts.txt").write_text(PROMPTS)
    common = ["--ckpt", str(t2i_ckpt), "--sampler", "sde", "--cfg-scale", "3", "--n", "4", *SAMPLE]
    runs = {"prompts": ["--prompts", str(tmp_path / "prompts.txt")], "two": ["--context-features", str(tmp_path / "two.npy")],
            "one": ["--context-features", str(tmp_path / "one.npy")]}
    for name, extra in runs.items():
        assert main_sample(common + ["--out", str(tmp_path / name)] + extra) == 0
    by_prompt, _ = load_samples(tmp_path / "prompts")
    by_feats, labels = load_samples(tmp_path / "two")
    assert torch.equal(by_prompt, by_feats) and labels.tolist() == [0, 1, 0, 1]
    one, labels = load_samples(tmp_path / "one")
    assert labels.tolist() == [0, 0, 0, 0] and torch.equal(one[1], by_feats[1])  # sample i: noise (seed, i), its caption
    cfg = json.loads((tmp_path / "two" / "sample_config.json").read_text())
    assert cfg["context_features"] == str((tmp_path / "two.npy").resolve()) and len(cfg["context_features_sha256"]) == 64


@pytest.fixture(scope="module")
def class_ckpt(tmp_path_factory):
    from conftest import random_sit, save_ckpt

    return save_ckpt(random_sit(16, 2), tmp_path_factory.mktemp("sit") / "sit.pt", 0)


@pytest.mark.parametrize("case, message", [
    ("empty prompt file", "holds no prompt"),
    ("missing prompt file", "not exist"),
    ("unknown word", "does not know"),
    ("missing features file", "not exist"),
    ("features too narrow", "reads (N, tokens, 32)"),
    ("features of other length", "trained on 12-token captions"),
    ("features not numbers", "pass (tokens, width)"),
    ("no prompts for an MMDiT", "pass --prompts FILE"),
    ("prompts and class ids", "drop them"),
    ("prompts for a class-conditional model", "class-conditional"),
    ("guidance without a null context", "--null-context"),
])
def test_bad_text_input_is_one_line_and_writes_nothing(tmp_path, t2i_ckpt, class_ckpt, capsys, case, message):
    from train.run.cli import main_sample

    prompts, feats = tmp_path / "prompts.txt", tmp_path / "feats.npy"
    prompts.write_text(PROMPTS)
    np.save(feats, np.zeros((12, 32), np.float32))
    ckpt = str(t2i_ckpt)
    extra = {
        "empty prompt file": ["--prompts", str(tmp_path / "empty.txt")],
        "missing prompt file": ["--prompts", str(tmp_path / "nope.txt")],
        "unknown word": ["--prompts", str(tmp_path / "elephant.txt")],
        "missing features file": ["--context-features", str(tmp_path / "nope.npy")],
        "features too narrow": ["--context-features", str(tmp_path / "narrow.npy")],
        "features of other length": ["--context-features", str(tmp_path / "long.npy")],
        "features not numbers": ["--context-features", str(tmp_path / "text.npy")],
        "no prompts for an MMDiT": [],
        "prompts and class ids": ["--prompts", str(prompts), "--labels", "1"],
        "prompts for a class-conditional model": ["--prompts", str(prompts)],
        "guidance without a null context": ["--context-features", str(feats), "--cfg-scale", "2"],
    }[case]
    (tmp_path / "empty.txt").write_text("\n \n")
    (tmp_path / "elephant.txt").write_text("a purple elephant\n")
    np.save(tmp_path / "narrow.npy", np.zeros((2, 12, 16), np.float32))
    np.save(tmp_path / "long.npy", np.zeros((2, 20, 32), np.float32))
    np.save(tmp_path / "text.npy", np.array([["a", "b"]]))
    if case == "prompts for a class-conditional model":
        ckpt = str(class_ckpt)
    if case == "guidance without a null context":  # the official layout: no null_context tensor
        sd = {k: v for k, v in weights(t2i_ckpt)["ema"].items() if k != "null_context"}
        ckpt = str(tmp_path / "official.pt")
        torch.save({"model": sd, "ema": sd, "args": {"encoder_depth": 1}, "steps": 2}, ckpt)
    out = tmp_path / "out"
    try:
        code = main_sample(["--ckpt", ckpt, "--out", str(out), *SAMPLE, *extra])
    except SystemExit as e:  # a refusal while parsing
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not out.exists()


def test_official_layout_samples_with_a_null_context_file(tmp_path, t2i_ckpt):
    """An official-layout T2I checkpoint (no null context inside) samples with guidance given
    --null-context (the empty caption's .npy): the samples of the API's load(..., null_context=)."""
    from train.run.cli import main_sample
    from train.evaluation.evaluate import load_samples
    from train.data.latents import build_codec
    from train.evaluation.sampling_t2i import caption_encoder, generate_t2i

    ema = weights(t2i_ckpt)["ema"]
    sd = {k: v for k, v in ema.items() if k != "null_context"}
    torch.save({"model": sd, "ema": sd, "args": {"encoder_depth": 1}, "steps": 2}, tmp_path / "official.pt")
    np.save(tmp_path / "empty_context.npy", ema["null_context"].numpy())
    feats = caption_encoder(load(t2i_ckpt))(PROMPTS.split("\n")[:2])
    np.save(tmp_path / "feats.npy", feats.numpy())
    assert main_sample(["--ckpt", str(tmp_path / "official.pt"), "--null-context", str(tmp_path / "empty_context.npy"),
                        "--context-features", str(tmp_path / "feats.npy"), "--out", str(tmp_path / "a"), "--n", "2",
                        "--cfg-scale", "4", *SAMPLE]) == 0
    model = load(tmp_path / "official.pt", null_context=tmp_path / "empty_context.npy")
    assert torch.equal(model.null_context, ema["null_context"])
    expected = build_codec("identity").decode(generate_t2i(model, features=feats, steps=2, cfg_scale=4.0, seed=3), uint8=True)
    assert torch.equal(load_samples(tmp_path / "a")[0], expected)


# ----------------------------------------------------------------------------------------------
# Probes on the MMDiT's image tokens
# ----------------------------------------------------------------------------------------------

PROBE = dict(n_images=24, n_train=24, ts=(0.0, 0.5), k=3, probe_epochs=5, probe_batch_size=8, batch_size=16,
             random_init_encoder=True, progress=False)


def test_image_sets_of_captioned_data(tmp_path):
    """Captioned items are (image, caption features): the probe's images, class labels and captions."""
    from probe.extract import image_set, labelled

    ds = build_dataset("captioned-scenes", "val", size=16, n=12)
    s = image_set(ds, 8, seed=1)
    idx, imgs, labs = next(s.batches(8))
    assert torch.equal(imgs, ds.images[idx]) and torch.equal(labs, ds.labels[idx]) and torch.equal(s.labels(), ds.labels[idx])
    assert torch.equal(s.contexts(idx), ds.contexts[idx])
    coco = CocoFeatures(root=coco_folder(tmp_path / "coco"))  # 3 (image, caption) items of 2 images
    c = image_set(coco)
    assert c.indices.tolist() == [0, 2]  # each image once (its caption 0)
    idx, imgs, labs = next(c.batches(4))
    assert imgs.shape == (2, 3, 16, 16) and labs.tolist() == [-1, -1]
    assert torch.equal(c.contexts(idx)[1], torch.from_numpy(np.load(tmp_path / "coco" / "train" / "1_0.npy")))
    with pytest.raises(UserError, match="no class labels"):
        labelled(c)
    with pytest.raises(UserError, match="no captions"):
        image_set(build_dataset("scenes", "val", size=16, n=8)).contexts(torch.arange(2))


@pytest.mark.filterwarnings("ignore:linear probes get only")  # a 2-step model: finite numbers, not converged probes
def test_layer_sweep_on_the_mmdit(t2i_ckpt, tmp_path, monkeypatch):
    """Every layer x t of the MMDiT's image tokens, null (empty caption) and real (own caption) modes:
    CKNNA, CKA, mutual k-NN and the linear probe, all finite."""
    from probe.analyses import layer_sweep
    from probe.extract import extract, image_set

    monkeypatch.setenv("REPA_CACHE", str(tmp_path / "cache"))
    for label, metrics in (("null", ("cknna", "cka", "mutual_knn", "linear_probe")), ("real", ("cknna",))):
        df = layer_sweep(t2i_ckpt, "captioned-scenes", label=label, metrics=metrics, **PROBE)
        cells = df[~df.is_reference]
        assert set(cells["label"]) == {label} and set(cells["model"]) == {"MMDiT-d4/2"}
        for metric in metrics:
            got = cells[cells.metric == metric]
            assert sorted(zip(got["layer"], got["t"])) == [(layer, t) for layer in range(3) for t in (0.0, 0.5)], metric
            assert np.isfinite(got["value"]).all()
    model = load(t2i_ckpt)
    images = image_set(build_dataset("captioned-scenes", "val", size=16, n=8))
    null, real = (extract(model, images, ts=(0.5,), label=label, progress=False) for label in ("null", "real"))
    assert torch.equal(null.values[0], real.values[0])  # layer 0: patch embedding, before any caption
    assert all(not torch.allclose(null.values[i], real.values[i]) for i in (1, 2))  # the caption enters through joint attention
    with pytest.raises(UserError, match="no captions"):
        layer_sweep(t2i_ckpt, "scenes", label="real", **PROBE)


def test_repa_probe_sweep_cli_on_the_mmdit(t2i_ckpt, tmp_path, monkeypatch, capsys):
    from probe.cli import main as probe_main

    monkeypatch.setenv("REPA_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "probe"
    args = ["sweep", "--checkpoint", str(t2i_ckpt), "--dataset", "captioned-scenes", "--random-init-encoder", "--n-images", "24",
            "--n-train", "0", "--t", "0", "0.5", "--k", "3", "--metrics", "cknna", "--out", str(out), "--no-plot", "--no-progress"]
    assert probe_main(args) == 0
    df = pd.read_parquet(out / "layer_sweep.parquet")
    assert sorted(zip(df["layer"], df["t"])) == [(layer, t) for layer in range(3) for t in (0.0, 0.5)]
    assert np.isfinite(df["value"]).all() and set(df["metric"]) == {"cknna"}
