"""Short real training runs: vanilla, REPA, accumulation, two encoders, 2 processes, exact resume,
atomic saves and every bad input the issue lists."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from train.run import checkpoints
from train.run.cli import as_vanilla, main_train
from train.run.config import DataConfig, ModelConfig, TrainConfig, override
from train.errors import UserError
from train.run.loop import batch_indices, keep_in_series, train
from train.targets.encoders import TeacherConfig
from train.models.loading import load

TEACHER_DIM = TeacherConfig().width

ROOT = Path(__file__).resolve().parent.parent


def micro(**kw) -> TrainConfig:
    """A real configuration small enough for a test: 16x16 shapes, 16 tokens, 2 blocks of width 32."""
    cfg = TrainConfig(
        model=ModelConfig(name="SiT-T/4", input_size=16, in_channels=3, num_classes=10, depth=2, hidden_size=32,
                          num_heads=2, encoder_depth=1, z_dims=(TEACHER_DIM,), projector_dim=64),
        data=DataConfig(dataset="shapes", image_size=16, n_train=64),
        encoders=("builtin-teacher",), random_init_encoders=True, proj_coeff=0.5, lr=1e-3, batch_size=8,
        steps=4, ema_decay=0.9, log_every=1, ckpt_every=2, ckpt_series="all", device="cpu", threads=1,
    )
    return override(cfg, [f"{k}={json.dumps(v)}" for k, v in kw.items()]) if kw else cfg


def weights(path) -> dict:
    return torch.load(path, weights_only=True)


def test_two_step_repa_and_vanilla_runs(tmp_path):
    cfg = micro(steps=2)
    latest = train(cfg, tmp_path / "repa", progress=False)
    train(as_vanilla(cfg), tmp_path / "vanilla", progress=False)
    for name in ("repa", "vanilla"):
        run = tmp_path / name
        m = pd.read_json(run / "metrics.jsonl", lines=True)
        assert list(m["step"]) == [1, 2] and m["denoise_loss"].notna().all()
        meta = json.loads((run / "config.json").read_text())
        assert meta["git_revision"] and meta["config"]["proj_coeff"] == (0.5 if name == "repa" else 0.0)
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest.pt", "step_0000000.pt", "step_0000002.pt"]
    assert (pd.read_json(tmp_path / "repa" / "metrics.jsonl", lines=True)["proj_loss"] != 0).all()
    assert (pd.read_json(tmp_path / "vanilla" / "metrics.jsonl", lines=True)["proj_loss"] == 0).all()
    # checkpoints are plain data and load through the public loader
    state = weights(latest)
    assert state["step"] == 2 and set(state) >= {"model", "ema", "opt", "rng", "model_config", "train_config"}
    m = load(latest)
    assert m.cfg.z_dims == (TEACHER_DIM,) and not m.training and m.source["step"] == 2
    assert load(tmp_path / "vanilla" / "checkpoints" / "latest.pt").cfg.z_dims == ()


def test_side_by_side_runs_share_data_and_initialisation(tmp_path):
    """Same seed: the two runs start from the same backbone and see the same batches."""
    cfg = micro(steps=1)
    train(cfg, tmp_path / "repa", progress=False)
    train(as_vanilla(cfg), tmp_path / "vanilla", progress=False)
    a = weights(tmp_path / "repa" / "checkpoints" / "step_0000000.pt")["model"]
    b = weights(tmp_path / "vanilla" / "checkpoints" / "step_0000000.pt")["model"]
    for k in b:
        assert torch.equal(a[k], b[k]), k
    assert torch.equal(batch_indices(64, 8, 0, 9), batch_indices(64, 8, 0, 9))
    # epochs are permutations: 8 batches of 8 cover 64 images once
    assert sorted(torch.cat([batch_indices(64, 8, 0, s) for s in range(8)]).tolist()) == list(range(64))


def test_gradient_accumulation_matches_full_batch(tmp_path):
    """Accumulating 2 x 4 gives the same updates as one batch of 8: the step's random draws are
    made for the global batch and sliced, so only the float summation order differs."""
    cfg = micro(steps=3)
    train(cfg, tmp_path / "full", progress=False)
    train(override(cfg, ["grad_accum=2"]), tmp_path / "acc", progress=False)
    a, b = weights(tmp_path / "full" / "checkpoints" / "latest.pt")["model"], weights(tmp_path / "acc" / "checkpoints" / "latest.pt")["model"]
    init = weights(tmp_path / "full" / "checkpoints" / "step_0000000.pt")["model"]
    assert max((a[k] - init[k]).abs().max() for k in a) > 1e-3  # it trained
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_two_target_encoders(tmp_path):
    cfg = micro(steps=2, encoders=["builtin-teacher", "builtin-teacher"], model={**micro().model.to_dict(), "z_dims": [TEACHER_DIM, TEACHER_DIM]})
    train(cfg, tmp_path / "two", progress=False)
    state = weights(tmp_path / "two" / "checkpoints" / "latest.pt")
    assert "projectors.1.4.weight" in state["model"]


def test_resume_is_bitwise_exact(tmp_path):
    cfg = micro(steps=6)
    train(cfg, tmp_path / "straight", progress=False)
    train(cfg, tmp_path / "interrupted", progress=False, stop_after=3)  # stops after step 3 (last ckpt: 2)
    (tmp_path / "interrupted" / "checkpoints" / "latest.pt").unlink()
    os.replace(tmp_path / "interrupted" / "checkpoints" / "step_0000002.pt", tmp_path / "interrupted" / "checkpoints" / "latest.pt")
    train(cfg, tmp_path / "interrupted", progress=False)
    a = weights(tmp_path / "straight" / "checkpoints" / "latest.pt")
    b = weights(tmp_path / "interrupted" / "checkpoints" / "latest.pt")
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    m = pd.read_json(tmp_path / "interrupted" / "metrics.jsonl", lines=True)
    assert list(m["step"]) == [1, 2, 3, 4, 5, 6]  # lines after the resumed checkpoint were replaced


def test_a_finished_run_continued_to_more_steps_is_the_longer_run(tmp_path):
    """The selection study's stage 8 continues 2,000-step runs to 4,000: the run length enters no schedule,
    so a run trained to 3 steps and continued to 6 holds the weights of a run trained to 6 at once."""
    train(micro(steps=6), tmp_path / "straight", progress=False)
    train(micro(steps=3), tmp_path / "continued", progress=False)
    train(micro(steps=6), tmp_path / "continued", progress=False)
    a = weights(tmp_path / "straight" / "checkpoints" / "latest.pt")
    b = weights(tmp_path / "continued" / "checkpoints" / "latest.pt")
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)


def test_a_run_killed_before_its_evaluation_evaluates_that_step_when_resumed(tmp_path):
    """Killed between the checkpoint of an evaluation step and the evaluation (the evaluation takes
    minutes, the checkpoint milliseconds): the resumed run evaluates that step, once, with the same
    EMA weights an uninterrupted run evaluated."""
    seen = {}

    def evaluator(ema, step):
        seen.setdefault(step, []).append(sum(float(p.double().sum()) for p in ema.parameters()))
        return {"fd": float(step)}

    cfg = micro(steps=4, eval_every=2, sample_every=2)
    train(cfg, tmp_path / "straight", progress=False, evaluator=evaluator)
    straight = dict(seen)
    seen.clear()
    out = tmp_path / "interrupted"
    train(cfg, out, progress=False, stop_after=2)  # no evaluator: stands for a kill before the evaluation
    (out / "samples" / "step_0000002.png").unlink()  # nor its sample grid
    train(cfg, out, progress=False, evaluator=evaluator)
    m = pd.read_json(out / "metrics.jsonl", lines=True)
    assert list(m.loc[m["fd"].notna(), "step"]) == [2, 4]
    assert seen == straight  # step 2 evaluated once on resume, on the same EMA weights
    assert (out / "samples" / "step_0000002.png").is_file()
    train(cfg, out, progress=False, evaluator=evaluator)  # a finished run resumed: nothing more
    assert len(pd.read_json(out / "metrics.jsonl", lines=True)) == len(m) and seen == straight


class Killed(BaseException):
    """Stands for the process being killed."""


def test_killed_between_the_checkpoint_writes_keeps_the_series_complete(tmp_path, monkeypatch):
    """A step that is both latest.pt and a series checkpoint is two writes; a run killed after the
    first of them resumes with every series checkpoint present in the end."""
    import train.run.loop as loop

    real, calls = loop.atomic_save, {"n": 0}

    def killed_after_one_write(state, path):
        if state.get("step") == 4:
            calls["n"] += 1
            if calls["n"] == 2:
                raise Killed
        real(state, path)

    cfg = micro(steps=6)
    monkeypatch.setattr(loop, "atomic_save", killed_after_one_write)
    with pytest.raises(Killed):
        train(cfg, tmp_path / "run", progress=False)
    monkeypatch.setattr(loop, "atomic_save", real)
    train(cfg, tmp_path / "run", progress=False)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step_*.pt")) == [f"step_{s:07d}.pt" for s in (0, 2, 4, 6)]
    train(cfg, tmp_path / "straight", progress=False)
    for s in (4, 6):
        a, b = (weights(tmp_path / r / "checkpoints" / f"step_{s:07d}.pt")["model"] for r in ("run", "straight"))
        assert all(torch.equal(a[k], b[k]) for k in a)


def kill_9_and_resume(tmp_path, args: list[str], kill_at: int = 15, last: int = 40) -> tuple[Path, Path]:
    """Train ``args`` uninterrupted (``ref``), then the same command in a subprocess killed with
    SIGKILL once step ``kill_at``'s checkpoint exists, then the same command again (``killed``)."""
    ref, run = tmp_path / "ref", tmp_path / "killed"
    assert main_train(args + ["--out", str(ref)]) == 0
    proc = subprocess.Popen([sys.executable, "-m", "train", *args, "--out", str(run)], env={**os.environ, "PYTHONPATH": str(ROOT)},
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "checkpoints" / f"step_{kill_at:07d}.pt").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "checkpoints" / f"step_{last:07d}.pt").exists(), "finished before the kill"
    assert main_train(args + ["--out", str(run)]) == 0
    return ref, run


def test_kill_9_then_same_command_gives_identical_weights(tmp_path):
    args = ["--preset", "tiny", "--steps", "40", "--ckpt-every", "5", "--no-progress", "--threads", "1",
            "--set", "random_init_encoders=true", "model.depth=2", "model.hidden_size=32", "model.num_heads=2",
            "model.encoder_depth=1", "model.projector_dim=64", "data.n_train=128", "batch_size=8", "log_every=1", "sample_every=0", "eval_every=0", "ckpt_series=\"all\""]
    ref, run = kill_9_and_resume(tmp_path, args)
    a, b = weights(ref / "checkpoints" / "latest.pt"), weights(run / "checkpoints" / "latest.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert list(pd.read_json(run / "metrics.jsonl", lines=True)["step"]) == list(range(1, 41))


def test_atomic_save_survives_a_crash(tmp_path, monkeypatch):
    path = tmp_path / "latest.pt"
    checkpoints.atomic_save({"step": 1, "w": torch.ones(3)}, path)

    def crash(obj, f, *a, **k):
        Path(f).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        checkpoints.atomic_save({"step": 2}, path)
    monkeypatch.undo()
    assert weights(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]


def test_nan_loss_stops_and_names_the_last_good_checkpoint(tmp_path, monkeypatch):
    import train.run.loop as loop

    real = loop.denoising_loss
    calls = {"n": 0}

    def poisoned(*a, **k):
        calls["n"] += 1
        out = real(*a, **k)
        return out * float("nan") if calls["n"] >= 3 else out

    monkeypatch.setattr(loop, "denoising_loss", poisoned)
    with pytest.raises(UserError, match="last good checkpoint is step 2") as e:
        train(micro(steps=6), tmp_path / "nan", progress=False)
    assert "\n" not in str(e.value)
    assert load(tmp_path / "nan" / "checkpoints" / "latest.pt").source["step"] == 2


@pytest.mark.parametrize("argv,msg", [
    (["--set", "batch_size=7", "grad_accum=2"], "not divisible"),
    (["--proj-coeff", "0.5", "--encoders"], None),
    (["--set", "data.dataset=imagenet"], "unknown dataset"),
    (["--set", "model.num_classes=3"], "outside [0, 3)"),
    (["--set", "data.image_size=32"], "input_size 16 differs"),
    (["--set", "nonsense=1"], "unknown config field"),
    (["--encoders", "dinov2-vit-b", "--set", "model.z_dims=[768]"], "needs weights"),
    (["--set", "data.dataset=folder", "data.root=/nonexistent"], "does not exist"),
])
def test_bad_input_is_one_line(tmp_path, capsys, argv, msg):
    if msg is None:  # argparse itself rejects an empty --encoders
        with pytest.raises(SystemExit):
            main_train(argv + ["--out", str(tmp_path / "x")])
        return
    code = main_train(["--preset", "tiny", "--steps", "1", "--no-progress", "--out", str(tmp_path / "x"), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and "\n" not in err and msg in err, err


def test_bad_images_in_a_folder(tmp_path, capsys):
    from PIL import Image

    root = tmp_path / "imgs"
    (root / "cat").mkdir(parents=True)
    Image.new("RGB", (40, 40), (200, 10, 10)).save(root / "cat" / "a.png")
    (root / "cat" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    code = main_train(["--preset", "tiny", "--steps", "1", "--no-progress", "--out", str(tmp_path / "x"),
                       "--set", "data.dataset=folder", f"data.root={root}", "proj_coeff=0", "model.z_dims=[]", "encoders=[]"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "b.png" in err and "\n" not in err, err


def test_resuming_with_other_settings_is_refused(tmp_path):
    cfg = micro(steps=1)
    train(cfg, tmp_path / "r", progress=False)
    with pytest.raises(UserError, match="different settings"):
        train(override(cfg, ["seed=1"]), tmp_path / "r", progress=False)


def test_paper_presets_print_published_hyperparameters(capsys):
    for name, depth in (("SiT-B/2", 4), ("SiT-L/2", 8), ("SiT-XL/2", 8)):
        assert main_train(["--preset", name, "--dry-run"]) == 0
        cfg = json.loads(capsys.readouterr().out)
        assert cfg["model"]["name"] == name and cfg["model"]["encoder_depth"] == depth
        assert cfg["encoders"] == ["dinov2-vit-b"] and cfg["proj_coeff"] == 0.5
        assert cfg["batch_size"] == 256 and cfg["lr"] == 1e-4 and cfg["betas"] == [0.9, 0.999]
        assert cfg["weight_decay"] == 0 and cfg["max_grad_norm"] == 1.0 and cfg["ema_decay"] == 0.9999
        assert cfg["model"]["class_dropout_prob"] == 0.1 and cfg["model"]["projector_dim"] == 2048


def test_checkpoint_series_is_log_spaced():
    assert [s for s in range(0, 100) if keep_in_series(s, 5, "log")] == [0, 5, 10, 20, 40, 80]
    assert [s for s in range(0, 20) if keep_in_series(s, 5, "all")] == [0, 5, 10, 15]


def test_two_process_cpu_run(tmp_path):
    """torchrun with gloo: 2 processes split each global batch and reproduce the 1-process run."""
    cfg = micro(steps=12, batch_size=16, ckpt_every=12, proj_coeff=0.5)
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(cfg.to_dict()))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "train", "--config", str(cfg_file), "--out", str(tmp_path / "ddp"), "--no-progress"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    train(cfg, tmp_path / "single", progress=False)
    two = pd.read_json(tmp_path / "ddp" / "metrics.jsonl", lines=True)
    one = pd.read_json(tmp_path / "single" / "metrics.jsonl", lines=True)
    assert list(two["step"]) == list(range(1, 13))
    assert json.loads((tmp_path / "ddp" / "config.json").read_text())["world_size"] == 2
    # same data, noise and initialisation: the loss curves agree up to float reduction order,
    # and so do the weights
    torch.testing.assert_close(torch.tensor(two["loss"].values), torch.tensor(one["loss"].values), rtol=1e-3, atol=1e-4)
    a, b = weights(tmp_path / "ddp" / "checkpoints" / "latest.pt")["model"], weights(tmp_path / "single" / "checkpoints" / "latest.pt")["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("bad", ["model.class_dropout_prob=2", "ema_decay=-0.1", "model.class_dropout_prob=\"x\""])
def test_probabilities_are_checked_before_anything_runs(bad):
    from probe.demo import demo_config
    from train.errors import UserError

    with pytest.raises(UserError, match=r"(class_dropout_prob|ema_decay) .* is not a (finite )?number( in \[0, 1\])?: use"):
        demo_config(0, 2, [bad])
    assert demo_config(0, 2, ["model.class_dropout_prob=1.0"]).model.class_dropout_prob == 1.0


def test_an_unconditional_model_samples_with_the_null_class_whatever_label_it_is_given():
    """class_dropout_prob = 1: training only ever saw the null class, so evaluation, sample grids and
    probes (which pass real labels) must get it too, not the untrained class embeddings."""
    from train.models.loading import build_model as build

    cfg = micro(model={**micro().model.to_dict(), "class_dropout_prob": 1.0}).model
    model = build(cfg).eval()
    labels = torch.tensor([0, 3, 5])
    null = torch.full_like(labels, cfg.num_classes)
    assert torch.equal(model.y_embedder(labels), model.y_embedder(null))
    cond = build(micro().model).eval()  # a conditional model keeps its labels at evaluation
    assert not torch.equal(cond.y_embedder(labels), cond.y_embedder(torch.full_like(labels, cond.cfg.num_classes)))


def test_a_sample_grid_has_a_column_per_class_for_ten_classes(tmp_path):
    """Fashion-MNIST's ten classes each get a column (the grid once stopped at eight: classes 8, 9 unseen)."""
    from PIL import Image

    train(micro(steps=2, sample_every=2), tmp_path, progress=False)
    w, h = Image.open(tmp_path / "samples" / "step_0000002.png").size
    assert (w, h) == (10 * (16 + 2) + 2, 4 * (16 + 2) + 2)  # 10 columns x 4 rows of 16 px images, 2 px borders


def test_vanilla_is_one_run_whatever_repa_variant_it_is_the_baseline_of():
    """as_vanilla drops what only shapes REPA's targets or projector, so the tiny preset's vanilla (iREPA's
    targets since plan stage 9) is the vanilla of REPA's own targets: the selection study's vanilla runs
    are the extended study's vanilla arms."""
    from train.run.config import preset

    irepa = preset("tiny")
    assert (irepa.target_norm, irepa.model.projector) == ("spatial", "conv")
    plain = dataclasses.replace(irepa, target_norm="none", proj_coeff=0.5, model=dataclasses.replace(irepa.model, projector="mlp"))
    assert as_vanilla(irepa).to_dict() == as_vanilla(plain).to_dict()
    assert as_vanilla(irepa).target_norm == "none" and as_vanilla(irepa).model.z_dims == ()
