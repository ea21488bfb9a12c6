"""Generation evaluation: metrics against closed forms, reproducible / sharded / resumable sampling, the
ADM npz layout, the built-in evaluator, the Inception's offline behaviour and the CLIs end to end."""

import json

import numpy as np
import pytest
import scipy.linalg
import torch

from train.evaluation import evaluate as ev
from train.run.config import DataConfig, ModelConfig, TrainConfig
from train.targets.encoders import TeacherConfig, TeacherViT
from train.errors import UserError
from train.data.latents import build_codec
from train.models.loading import build


@pytest.fixture(autouse=True)
def one_thread_and_private_cache(tmp_path, monkeypatch):
    """Tiny tensors run faster on one thread (and far faster on a busy machine); caches go to tmp."""
    monkeypatch.setenv("REPA_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    model = build("SiT-T/4", input_size=16, in_channels=3, depth=2, hidden_size=32, num_heads=2, num_classes=10)
    model.initialize_weights()
    with torch.no_grad():  # the published init zeroes the output layer: give the samples some structure
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """A checkpoint in the toolkit's own format."""
    model = tiny_model()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    sd = model.state_dict()
    torch.save({"model_config": model.cfg.to_dict(), "model": sd, "ema": sd, "step": 0}, path)
    return path


TINY_EVALUATOR = ev.EvaluatorConfig(n_train=2000, steps=60, batch_size=128, warmup=10)


@pytest.fixture(scope="module")
def evaluator_file(tmp_path_factory):
    return ev.train_builtin_evaluator(TINY_EVALUATOR, cache_dir=tmp_path_factory.mktemp("ev"), progress=False)


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------

def test_frechet_distance_of_a_set_with_itself_is_zero():
    feats = np.random.default_rng(0).normal(size=(500, 16)) @ np.random.default_rng(1).normal(size=(16, 16))
    mu, sigma = ev.feature_statistics(feats)
    assert abs(ev.frechet_distance(mu, sigma, mu, sigma)) < 1e-8
    # rank-deficient covariances (fewer samples than dimensions): ~0 relative to the total variance
    mu, sigma = ev.feature_statistics(feats[:8])
    assert abs(ev.frechet_distance(mu, sigma, mu, sigma)) < 1e-7 * np.trace(sigma)


def test_frechet_distance_matches_closed_forms():
    rng = np.random.default_rng(0)
    d = 12
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    # diagonal covariances: the matrix root is elementwise
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert ev.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    # a common random rotation leaves the distance unchanged
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    rotated = ev.frechet_distance(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2, q @ np.diag(b) @ q.T)
    assert rotated == pytest.approx(expected, rel=1e-9)
    # general covariances: the textbook form with scipy's sqrtm
    m1, m2 = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = m1 @ m1.T / d, m2 @ m2.T / d
    textbook = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert ev.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(textbook, rel=1e-8)


def test_precision_recall_on_known_distributions():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(400, 8))
    assert ev.precision_recall(real, real.copy()) == {"precision": 1.0, "recall": 1.0}
    far = rng.normal(size=(400, 8)) + 100
    assert ev.precision_recall(real, far) == {"precision": 0.0, "recall": 0.0}
    # half of the fakes on the real distribution, half far away: precision ~ 1/2, recall ~ 1
    half = np.concatenate([rng.normal(size=(200, 8)), far[:200]])
    pr = ev.precision_recall(real, half)
    assert 0.4 < pr["precision"] <= 0.5 and pr["recall"] > 0.9


def test_inception_score_limits():
    assert ev.inception_score(np.zeros((100, 1008)))[0] == pytest.approx(1.0)
    confident = np.full((100, 10), -1e4)
    confident[np.arange(100), np.arange(100) % 10] = 0
    assert ev.inception_score(confident, splits=2)[0] == pytest.approx(10.0, rel=1e-6)


# ----------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------

SPEC = ev.SampleSpec(n=10, sampler="sde", steps=3, seed=7, chunk=4)


def test_sampling_is_reproducible_by_seed_and_sharding_does_not_change_samples():
    model, codec = tiny_model(), build_codec("identity")
    images, labels = ev.generate_spec(model, SPEC, codec)
    assert images.shape == (10, 3, 16, 16) and images.dtype == torch.uint8 and labels.shape == (10,)
    again, again_labels = ev.generate(model, 10, "sde", 3, seed=7, chunk=4, codec=codec)
    assert torch.equal(images, again) and torch.equal(labels, again_labels)
    other, _ = ev.generate_spec(model, ev.SampleSpec(10, "sde", 3, seed=8, chunk=4), codec)
    assert not torch.equal(images, other)
    # two ranks: rank 0 takes chunks 0 and 2, rank 1 chunk 1; together they are the unsharded samples
    parts = {k: ev.sample_chunk(model, SPEC, codec, k)[0] for rank in (0, 1) for k in range(rank, SPEC.n_chunks, 2)}
    assert torch.equal(torch.cat([parts[k] for k in sorted(parts)]), images)
    # the noise of sample i depends on (seed, i) only: chunking changes nothing for the ODE
    euler = ev.SampleSpec(10, "euler", 3, seed=7, chunk=4)
    a, _ = ev.generate_spec(model, euler, codec)
    b, _ = ev.generate_spec(model, ev.SampleSpec(10, "euler", 3, seed=7, chunk=3), codec)
    assert (a.int() - b.int()).abs().max() <= 1  # batch-size-dependent float rounding only


def test_labels_uniform_from_seed_or_given():
    uniform = ev.sample_labels(SPEC, range(200), 10)
    assert torch.equal(uniform, ev.sample_labels(SPEC, range(200), 10)) and len(uniform.unique()) == 10
    assert torch.equal(uniform[50:60], ev.sample_labels(SPEC, range(50, 60), 10))
    given = ev.SampleSpec(5, labels=(0, 3, 7))
    assert ev.sample_labels(given, range(5), 10).tolist() == [0, 3, 7, 0, 3]


def test_sharded_sample_dirs_resume_and_npz_layout(tmp_path):
    model, codec = tiny_model(), build_codec("identity")
    out = tmp_path / "s"
    first = ev.sample_to_dir(model, SPEC, codec, out, rank=1, world=2, progress=False)
    assert first == {"sampled": [1], "skipped": [], "npz": None}  # rank 0's chunks are missing
    second = ev.sample_to_dir(model, SPEC, codec, out, rank=0, world=2, progress=False)
    assert second["sampled"] == [0, 2] and second["npz"] == out / "samples_10x16x16x3.npz"
    with np.load(second["npz"]) as data:
        arr, labels = data["arr_0"], data["labels"]
        assert np.array_equal(data["arr_1"], labels)  # ADM's key for the labels
    assert arr.dtype == np.uint8 and arr.shape == (10, 16, 16, 3) and labels.shape == (10,)
    images, expected_labels = ev.generate_spec(model, SPEC, codec)
    assert np.array_equal(arr, images.permute(0, 2, 3, 1).numpy()) and np.array_equal(labels, expected_labels.numpy())
    assert (out / "grid.png").exists() and len(list((out / "images").glob("*.png"))) == 10
    # resume: only the chunk with a missing PNG is sampled again, and the result is the same
    (out / "images" / "000005.png").unlink()
    again = ev.sample_to_dir(model, SPEC, codec, out, progress=False)
    assert again["sampled"] == [1] and again["skipped"] == [0, 2]
    loaded, loaded_labels = ev.load_samples(out)
    assert torch.equal(loaded, images) and torch.equal(loaded_labels, expected_labels)
    with pytest.raises(UserError, match="other settings"):
        ev.sample_to_dir(model, ev.SampleSpec(10, "euler", 3, seed=7, chunk=4), codec, out, progress=False)


def test_repa_sample_cli_end_to_end(tmp_path, tiny_ckpt, capsys):
    from train.run.cli import main_sample

    out = tmp_path / "samples"
    args = ["--ckpt", str(tiny_ckpt), "--out", str(out), "--n", "6", "--batch-size", "4", "--steps", "2",
            "--sampler", "heun", "--labels", "1", "2", "--seed", "3", "--device", "cpu", "--no-progress"]
    assert main_sample(args) == 0
    assert capsys.readouterr().out.strip() == str(out / "samples_6x16x16x3.npz")
    cfg = json.loads((out / "sample_config.json").read_text())
    assert cfg["sampler"] == "heun" and cfg["steps"] == 2 and cfg["n"] == 6 and cfg["seed"] == 3
    assert cfg["labels"] == [1, 2] and cfg["guidance_interval"] == [0.0, 1.0] and cfg["cfg_scale"] == 1.0
    assert cfg["checkpoint"]["path"] == str(tiny_ckpt.resolve()) and cfg["git_revision"]
    images, labels = ev.load_samples(out / "samples_6x16x16x3.npz")
    assert labels.tolist() == [1, 2, 1, 2, 1, 2]
    from train.models.loading import load

    expected, _ = ev.generate(load(tiny_ckpt), 6, "heun", 2, labels=(1, 2), seed=3, chunk=4)
    assert torch.equal(images, expected)
    assert main_sample(args) == 0  # everything done: nothing sampled again
    assert main_sample(["--ckpt", str(tiny_ckpt), "--out", str(tmp_path / "bad"), "--class-id", "99"]) == 2
    assert "outside [0, 10)" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Feature networks
# ----------------------------------------------------------------------------------------------

def test_builtin_evaluator_is_independent_of_the_teacher():
    evaluator, teacher = ev.EvaluatorCNN(ev.EvaluatorConfig()), TeacherViT(TeacherConfig())
    assert not isinstance(evaluator, type(teacher)) and not isinstance(teacher, type(evaluator))
    assert not any(isinstance(m, (torch.nn.TransformerEncoder, torch.nn.MultiheadAttention)) for m in evaluator.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in evaluator.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in teacher.modules())
    ev_names, teacher_names = set(dict(evaluator.named_parameters())), set(dict(teacher.named_parameters()))
    assert "pos_embed" in teacher_names and not any("attn" in n or "pos_embed" in n for n in ev_names)
    assert ev.EvaluatorConfig().seed != TeacherConfig().seed


def test_builtin_evaluator_trains_and_is_cached(evaluator_file):
    side = json.loads(evaluator_file.with_suffix(".json").read_text())
    assert side["seed"] == TINY_EVALUATOR.seed and side["train_seconds"] > 0 and side["n_val"] == 2000
    assert side["val_accuracy"] > 0.2  # ten classes: chance is 0.1 (the full config reaches ~0.99)
    mtime = evaluator_file.stat().st_mtime_ns
    assert ev.train_builtin_evaluator(TINY_EVALUATOR, cache_dir=evaluator_file.parent.parent, progress=False) == evaluator_file
    assert evaluator_file.stat().st_mtime_ns == mtime
    net = ev.load_feature_net(ev.EVALUATOR, evaluator_file)
    out = net(torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8))  # other sizes are resized
    assert out["features"].shape == (3, 64) and out["class_logits"].shape == (3, 10)
    assert net.provenance["key"] == TINY_EVALUATOR.key() and net.provenance["val_accuracy"] == side["val_accuracy"]


def test_missing_inception_weights_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for weights in (None, tmp_path / "nope.pth"):
        with pytest.raises(UserError) as e:
            ev.load_feature_net("inception", weights)
        assert "\n" not in str(e.value) and "--inception-weights" in str(e.value)
    np.savez(tmp_path / "s.npz", arr_0=np.zeros((4, 8, 8, 3), np.uint8))
    from conftest import exit_code

    assert exit_code(ev.main, ["fid", "--samples", str(tmp_path / "s.npz"), "--inception-weights", str(tmp_path / "nope.pth")]) == 2
    err = capsys.readouterr().err  # refused where the option is parsed (train.run.rules)
    assert err.startswith("error: argument --inception-weights") and "pt_inception-2015-12-05" in err and err.count("\n") == 1


def test_fid_inception_loads_a_pytorch_fid_layout_file(tmp_path):
    path = tmp_path / ev.INCEPTION_FILE
    torch.save(ev.fid_inception().state_dict(), path)
    net = ev.load_feature_net("inception", path)
    assert {k for k in dict(net.net.named_parameters()) if k.startswith("AuxLogits")} == set()
    out = net(torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8))
    assert out["features"].shape == (1, 2048) and out["spatial"].shape == (1, 7 * 17 * 17)
    assert out["is_logits"].shape == (1, 1008)
    assert net.provenance["weights"] == str(path.resolve())


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------

def test_fid_cli_on_a_checkpoint_and_on_samples(tmp_path, tiny_ckpt, evaluator_file, capsys):
    common = ["--feature-weights", str(evaluator_file), "--ref-n", "64", "--no-progress"]
    assert ev.main(["fid", "--ckpt", str(tiny_ckpt), "--n", "8", "--steps", "2", "--batch-size", "8",
                    "--device", "cpu", *common]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["fd"] > 0 and 0 <= res["precision"] <= 1 and 0 <= res["class_acc"] <= 1
    assert res["n"] == 8 and res["sampler"] == "euler" and res["steps"] == 2
    assert res["feature"]["name"] == ev.EVALUATOR and res["feature"]["key"] == TINY_EVALUATOR.key()
    assert res["reference"] == {"dataset": "shapes", "root": None, "split": "train", "n": 64, "size": 16}
    assert list((tmp_path / "cache" / "reference").glob("*.npz"))  # cached
    # existing samples: sampler and steps come from their sample_config.json
    ev.sample_to_dir(tiny_model(), ev.SampleSpec(8, "euler", 2, chunk=8), build_codec("identity"), tmp_path / "s", progress=False)
    assert ev.main(["fid", "--samples", str(tmp_path / "s"), *common]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n"] == 8 and res["sampler"] == "euler" and res["steps"] == 2 and "fd" in res


def test_fid_cli_defaults_to_the_data_the_checkpoint_was_trained_on(tmp_path, evaluator_file, capsys):
    model = tiny_model()
    sd = model.state_dict()
    ckpt = tmp_path / "scenes.pt"  # a run of this toolkit records its TrainConfig: its data is the reference
    torch.save({"model_config": model.cfg.to_dict(), "model": sd, "ema": sd, "step": 0,
                "train_config": {"data": {"dataset": "scenes", "root": None}}}, ckpt)
    common = ["--n", "8", "--steps", "2", "--batch-size", "8", "--device", "cpu", "--feature-weights", str(evaluator_file),
              "--ref-n", "64", "--no-progress"]
    assert ev.main(["fid", "--ckpt", str(ckpt), *common]) == 0
    assert json.loads(capsys.readouterr().out)["reference"]["dataset"] == "scenes"
    assert ev.main(["fid", "--ckpt", str(ckpt), "--dataset", "shapes", *common]) == 0  # the option still decides
    assert json.loads(capsys.readouterr().out)["reference"]["dataset"] == "shapes"
    # samples written by repa-sample from that checkpoint: their sample_config.json names it
    assert ev.main(["sample", "--ckpt", str(ckpt), "--out", str(tmp_path / "s"), "--n", "8", "--steps", "2",
                    "--batch-size", "8", "--device", "cpu", "--no-progress"]) == 0
    capsys.readouterr()
    score = ["--feature-weights", str(evaluator_file), "--ref-n", "64", "--no-progress"]
    assert ev.main(["fid", "--samples", str(tmp_path / "s"), *score]) == 0
    assert json.loads(capsys.readouterr().out)["reference"]["dataset"] == "scenes"
    ckpt.unlink()  # the checkpoint gone: nothing to read, the fallback, said in one line
    assert ev.main(["fid", "--samples", str(tmp_path / "s"), *score]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["reference"]["dataset"] == "shapes" and "pass --dataset" in out.err


def test_real_data_scores_well_and_noise_scores_badly(evaluator_file):
    from train.data.datasets import ShapesDataset

    net = ev.load_feature_net(ev.EVALUATOR, evaluator_file)
    ref = ev.reference(net, "shapes", "train", 256, 32, progress=False)
    real = ShapesDataset("val", n=256)
    good = ev.evaluate_samples(real.images, real.labels, net, ref)
    noise = ev.evaluate_samples(torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8), real.labels, net, ref)
    assert good["fd"] < noise["fd"] / 10 and good["precision"] > noise["precision"] and good["class_acc"] > noise["class_acc"]


def test_halves_scored_from_one_extraction_equal_their_own_evaluation(evaluator_file):
    """A training evaluation extracts its samples' features once and scores the halves from them: the
    same numbers, to the bit, as scoring each half on its own (its features extracted in its own batches)."""
    from train.data.datasets import ShapesDataset

    net = ev.load_feature_net(ev.EVALUATOR, evaluator_file)
    ref = ev.reference(net, "shapes", "train", 256, 32, progress=False)
    real = ShapesDataset("val", n=300)
    images, labels = real.images, real.labels
    whole = ev.extract(net, images, batch=64)
    for part in (slice(0, 150), slice(150, 300), slice(37, 101)):  # batch boundaries of the whole fall inside each part
        assert np.array_equal(ev.extract(net, images[part], batch=64)["features"], whole["features"][part])
    memo: dict = {}
    scored = ev.score_with_halves(images, labels, net, ref, memo)
    halves = [ev.evaluate_samples(images[p], labels[p], net, ref) for p in (slice(0, 150), slice(150, 300))]
    expect = {k: v for k, v in ev.evaluate_samples(images, labels, net, ref).items() if k in scored}
    expect.update(fd_half_a=halves[0]["fd"], kid_half_a=halves[0]["kid"], fd_half_b=halves[1]["fd"], kid_half_b=halves[1]["kid"])
    assert scored == expect and len(memo) == 2  # the reference's kernel sums: one entry for 300 samples, one for 150
    assert ev.score_with_halves(images, labels, net, ref, memo) == expect  # a later evaluation reuses them


def test_kid_memo_gives_the_same_bits_and_keeps_real_sets_apart():
    from train.evaluation.generation_metrics import kid

    rng = np.random.default_rng(0)
    real, other_real = rng.normal(size=(400, 6)), rng.normal(0.3, 1, size=(400, 6))
    fakes = [rng.normal(m, 1, size=(300, 6)) for m in (0.0, 0.5)]
    memo: dict = {}
    for fake in fakes * 2:  # the second round reads the memo
        assert kid(fake, real, subsets=7, subset_size=100, memo=memo) == kid(fake, real, subsets=7, subset_size=100)
        assert kid(fake, other_real, subsets=7, subset_size=100, memo=memo) == kid(fake, other_real, subsets=7, subset_size=100)
    assert len(memo) == 2  # one entry per real set (same sizes, seed and kernel)
    kid(fakes[0][:200], real, subsets=7, subset_size=100, memo=memo)  # another fake size draws other real subsets
    assert len(memo) == 3
    # a real set with the same shape, total and first row as another, differing elsewhere, is another entry
    twin = real.copy()
    twin[[5, 6], 0], twin[[5, 6], 1] = real[[5, 6], 1], real[[5, 6], 0]  # swap two columns in rows 5 and 6
    twin[5, 2] += 0.25
    twin[6, 2] -= 0.25
    assert twin.sum() == pytest.approx(real.sum(), abs=1e-12) and np.array_equal(twin[0], real[0])
    assert kid(fakes[0], twin, subsets=7, subset_size=100, memo=memo) == kid(fakes[0], twin, subsets=7, subset_size=100)
    assert len(memo) == 4


def test_training_evaluator_uses_fixed_noise(evaluator_file):
    cfg = TrainConfig(model=ModelConfig(name="SiT-T/4", input_size=16, in_channels=3, num_classes=10, depth=2,
                                        hidden_size=32, num_heads=2),
                      data=DataConfig(dataset="shapes", image_size=16), eval_samples=12, sample_steps=2, seed=5)
    evaluator = ev.build_training_evaluator(cfg, feature_weights=str(evaluator_file), ref_n=64)
    model, twin, other = tiny_model(), tiny_model(), tiny_model(seed=1)
    state = torch.get_rng_state()
    first = evaluator(model, 10)
    assert torch.equal(state, torch.get_rng_state())  # the training run's RNG is untouched
    assert set(first) == {"fd", "kid", "kid_std", "precision", "recall", "class_acc", "class_confidence", "class_histogram",
                          "fd_half_a", "fd_half_b", "kid_half_a", "kid_half_b", "eval_n", "eval_sampler", "eval_steps",
                          "eval_feature", "eval_reference"}
    assert sum(first["class_histogram"]) == 12 and 0 < first["class_confidence"] <= 1
    assert first["fd_half_a"] != first["fd_half_b"]  # two disjoint halves of the samples: the noise of one estimate
    assert first["eval_n"] == 12 and first["eval_sampler"] == "euler" and first["eval_steps"] == 2
    assert evaluator(twin, 20) == first  # same weights, same noise: same numbers
    assert evaluator(other, 30)["fd"] != first["fd"]
