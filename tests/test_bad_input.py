"""Issue 14: one run directory, one writer; no checkpoint called good that is not; every bad input a
one-line refusal whose fix works; nothing left behind after a kill.

Each test asserts the exit status, a single-line message that names the problem and the fix, and
that nothing was lost or left behind.  All runs are the tiny preset cut down to seconds.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from train.run.cli import main_train
from train.run.rundir import lock_holder

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

TINY = ["--preset", "tiny", "--ckpt-every", "2", "--no-progress", "--threads", "1",
        "--set", "random_init_encoders=true", "model.depth=2", "model.hidden_size=32", "model.num_heads=2",
        "model.encoder_depth=1", "model.projector_dim=64", "data.n_train=64", "batch_size=8", "log_every=1",
        "sample_every=0", "eval_every=0", "ckpt_series=\"all\""]


def tiny(steps: int, out: Path, *extra: str) -> list[str]:
    return [*TINY, "--steps", str(steps), "--out", str(out), *extra]


def run(argv, capsys) -> tuple[int, str]:
    try:
        code = main_train(argv)
    except SystemExit as e:  # an option refused by its rule where argparse parses it (train.run.rules)
        code = e.code
    return code, capsys.readouterr().err.strip()


def one_line(err: str, *words: str) -> None:
    assert err.startswith("error:") and "\n" not in err, err
    for w in words:
        assert w in err, (w, err)


def weights(path) -> dict:
    return torch.load(path, weights_only=True)


def assert_same_run(a: Path, b: Path) -> None:
    """Bitwise the same weights, EMA and optimizer state, and the same logged steps."""
    sa, sb = weights(a / "checkpoints" / "latest.pt"), weights(b / "checkpoints" / "latest.pt")
    assert sa["step"] == sb["step"]
    for part in ("model", "ema"):
        for k in sa[part]:
            assert torch.equal(sa[part][k], sb[part][k]), (part, k)
    for i, st in sa["opt"]["state"].items():
        for k, v in st.items():
            assert torch.equal(v, sb["opt"]["state"][i][k]), (i, k)
    ma, mb = (pd.read_json(d / "metrics.jsonl", lines=True) for d in (a, b))
    assert list(ma["step"]) == list(mb["step"]) == list(range(1, sa["step"] + 1))
    assert ma["loss"].tolist() == mb["loss"].tolist()


def no_temporaries(d: Path) -> None:
    left = [p for p in d.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name]
    assert not left, left


def wait_for(cond, timeout: float = 180, what: str = "") -> None:
    deadline = time.time() + timeout
    while not cond():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


# ----------------------------------------------------------------------------------------------
# 1. one run directory, one writer; settings checked first; the optimizer follows the config
# ----------------------------------------------------------------------------------------------

def test_second_training_on_one_out_is_refused_at_once_and_the_first_is_untouched(tmp_path, capsys):
    run_dir, lone = tmp_path / "run", tmp_path / "lone"
    first = subprocess.Popen([sys.executable, "-m", "train", *tiny(30, run_dir)], env=ENV, cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lock = run_dir / ".lock"
    wait_for(lambda: lock.exists() and lock.read_text().strip() == str(first.pid), what="the first run's lock")
    t0 = time.time()
    code, err = run(tiny(30, run_dir, "--lr", "0.0005"), capsys)  # other settings too: the lock speaks first
    took = time.time() - t0
    assert first.poll() is None, "the first run ended before the second started"
    assert code == 2 and took < 5, took
    one_line(err, str(run_dir), "in use by another training", f"pid {first.pid}", "another --out")
    assert first.wait(timeout=300) == 0, first.stderr.read()[-2000:]
    assert main_train(tiny(30, lone)) == 0
    assert_same_run(run_dir, lone)
    assert json.loads((run_dir / "config.json").read_text())["config"]["lr"] == 2e-3
    assert lock_holder(run_dir) is None  # released with the process
    no_temporaries(run_dir)


def test_settings_are_checked_before_anything_slow(tmp_path, capsys, monkeypatch):
    import train.data.datasets

    assert main_train(tiny(2, tmp_path / "r")) == 0
    before = (tmp_path / "r" / "checkpoints" / "latest.pt").read_bytes()

    def slow(*a, **k):
        raise AssertionError("the dataset was built before the settings check")

    monkeypatch.setattr(train.data.datasets, "build_dataset", slow)
    code, err = run(tiny(4, tmp_path / "r", "--seed", "1"), capsys)
    assert code == 2
    one_line(err, "different settings (seed)", "new --out")
    assert (tmp_path / "r" / "checkpoints" / "latest.pt").read_bytes() == before


def test_lower_lr_then_resume_works_and_the_optimizer_follows_it(tmp_path, capsys):
    run_dir = tmp_path / "r"
    assert main_train(tiny(2, run_dir)) == 0
    code, err = run(tiny(4, run_dir, "--lr", "0.0005"), capsys)  # what the NaN message advises
    assert code == 0, err
    state = weights(run_dir / "checkpoints" / "latest.pt")
    assert state["step"] == 4 and all(g["lr"] == 0.0005 for g in state["opt"]["param_groups"])
    assert json.loads((run_dir / "config.json").read_text())["config"]["lr"] == 0.0005
    m = pd.read_json(run_dir / "metrics.jsonl", lines=True)
    assert list(m["step"]) == [1, 2, 3, 4] and list(m["lr"]) == [2e-3, 2e-3, 5e-4, 5e-4]


# ----------------------------------------------------------------------------------------------
# 2. no checkpoint with non-finite weights is saved or called good; overflow is one line
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv,words", [
    (["--set", "max_grad_norm=NaN"], ["max_grad_norm nan", "finite", "use 1.0"]),
    (["--lr", "1e39"], ["argument --lr: '1e39'", "use a learning rate such as 1e-4"]),
    (["--lr", "0"], ["argument --lr: '0'", "in (0, 1]"]),
    (["--set", "grad_accum=0"], ["grad_accum 0", "positive integer"]),
    (["--set", "log_every=\"5\""], ["log_every '5'", "integer"]),
    (["--set", "betas=[0.9, 1.5]"], ["betas", "[0.9, 0.999]"]),
])
def test_impossible_numbers_are_refused_before_the_run_directory_is_made(tmp_path, capsys, argv, words):
    code, err = run(tiny(2, tmp_path / "x", *argv), capsys)
    assert code == 2
    one_line(err, *words)
    assert not (tmp_path / "x").exists()


def test_nonfinite_weights_are_never_saved_nor_called_good(tmp_path, capsys, monkeypatch):
    import train.run.loop as loop

    real = loop.ema_update
    seen = {"n": 0}

    def poisoned(ema, params, decay):  # the weights turn NaN in the update of step 4; its loss was finite
        real(ema, params, decay)
        seen["n"] += 1
        if seen["n"] == 4:
            with torch.no_grad():
                params[0].fill_(float("nan"))
                ema[0].fill_(float("nan"))

    monkeypatch.setattr(loop, "ema_update", poisoned)
    run_dir = tmp_path / "nan"
    code, err = run(tiny(6, run_dir), capsys)  # the loss of step 4 was computed before the update: finite
    assert code == 2
    one_line(err, "NaN/inf by step 4", "last good checkpoint is step 2", "lower --lr", "then resume")
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert ckpts == ["latest.pt", "step_0000000.pt", "step_0000002.pt"]
    state = weights(run_dir / "checkpoints" / "latest.pt")
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for part in ("model", "ema") for v in state[part].values() if v.is_floating_point())
    # the advice works: resume (the cause gone) and finish equal to a run that never failed
    monkeypatch.setattr(loop, "ema_update", real)
    assert main_train(tiny(6, run_dir)) == 0
    assert main_train(tiny(6, tmp_path / "straight")) == 0
    for part in ("model", "ema"):
        a, b = weights(run_dir / "checkpoints" / "latest.pt")[part], weights(tmp_path / "straight" / "checkpoints" / "latest.pt")[part]
        assert all(torch.equal(a[k], b[k]) for k in a)
    no_temporaries(run_dir)


# ----------------------------------------------------------------------------------------------
# 3. options that vanished: repeated --set, typos and malformed JSON in --config
# ----------------------------------------------------------------------------------------------

def test_repeated_set_flags_accumulate(capsys):
    assert main_train(["--preset", "tiny", "--set", "batch_size=8", "--set", "steps=5", "model.depth=3", "--dry-run"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["batch_size"] == 8 and cfg["steps"] == 5 and cfg["model"]["depth"] == 3


@pytest.mark.parametrize("content,words", [
    ({"stpes": 5}, ["unknown field 'stpes'", "did you mean 'steps'"]),
    ({"model": {"dpeth": 4}}, ["unknown field 'model.dpeth'", "did you mean 'model.depth'"]),
    ({"config": {"steps": 5, "zzz_unheard_of": 1}, "git_revision": "x"}, ["unknown field 'zzz_unheard_of'", "--dry-run"]),
    ('{"steps": 5,', ["not valid JSON", "line 1", "fix it there"]),
    ("[1, 2]", ["JSON object"]),
    ({"model": {"name": "SiT-Q/9"}}, ["impossible setting", "unknown model name"]),
])
def test_config_file_typos_and_malformed_json_are_one_line(tmp_path, capsys, content, words):
    f = tmp_path / "cfg.json"
    f.write_text(content if isinstance(content, str) else json.dumps(content))
    code, err = run(["--config", str(f), "--out", str(tmp_path / "x")], capsys)
    assert code == 2
    one_line(err, str(f), *words)
    assert not (tmp_path / "x").exists()


def test_a_run_config_json_is_a_valid_config(tmp_path, capsys):
    assert main_train(tiny(1, tmp_path / "r")) == 0
    capsys.readouterr()
    assert main_train(["--config", str(tmp_path / "r" / "config.json"), "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 1


# ----------------------------------------------------------------------------------------------
# 4. nothing left behind after kill -9; side-by-side children die with the parent; damaged latest.pt
# ----------------------------------------------------------------------------------------------

HANG_IN_SAVE = """
import sys, time, torch
real = torch.save
def save(obj, f, *a, **k):
    real(obj, f, *a, **k)  # the temporary file is written; the rename onto latest.pt has not happened
    if isinstance(obj, dict) and obj.get("step") == {step} and ".latest.pt." in str(f):
        open({mark!r}, "w").write(str(f))
        time.sleep(600)
torch.save = save
from train.run.cli import main_train
sys.exit(main_train(sys.argv[1:]))
"""


def test_kill_9_during_a_save_then_the_same_command(tmp_path, capsys):
    run_dir, ref, mark = tmp_path / "killed", tmp_path / "ref", tmp_path / "in-save"
    script = tmp_path / "hang.py"
    script.write_text(HANG_IN_SAVE.format(step=4, mark=str(mark)))
    proc = subprocess.Popen([sys.executable, str(script), *tiny(8, run_dir)], env=ENV, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(mark.exists, what="the save of step 4")
        tmp = Path(mark.read_text())
        assert tmp.exists() and tmp.name.startswith(".latest.pt.") and tmp.name.endswith(".tmp")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert weights(run_dir / "checkpoints" / "latest.pt")["step"] == 2  # the old latest.pt survived
    code, err = run(tiny(8, run_dir), capsys)  # the same command
    assert code == 0, err
    no_temporaries(run_dir)
    assert main_train(tiny(8, ref)) == 0
    assert_same_run(run_dir, ref)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == sorted(p.name for p in (ref / "checkpoints").iterdir())


def test_killing_a_side_by_side_parent_stops_its_children(tmp_path, capsys):
    out = tmp_path / "pair"
    parent = subprocess.Popen([sys.executable, "-m", "train", *tiny(100_000, out), "--side-by-side", "--jobs", "2"],
                              env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        locks = [out / n / ".lock" for n in ("repa", "vanilla")]
        started = [out / n / "checkpoints" / "step_0000000.pt" for n in ("repa", "vanilla")]
        wait_for(lambda: all(p.exists() for p in started), what="both children training")
        pids = [int(p.read_text()) for p in locks]
        assert parent.pid not in pids and all(alive(p) for p in pids)
        code, err = run(tiny(100_000, out, "--side-by-side", "--jobs", "2"), capsys)  # a second parent: refused
        assert code == 2
        one_line(err, str(out), "in use by another side-by-side training", f"pid {parent.pid}")
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    wait_for(lambda: not any(alive(p) for p in pids), timeout=30, what="the children to end")
    # a rerun can lock them: the kernel drops a lock when the last thread of its holder exits, which
    # can be a moment after the main thread shows as a zombie
    wait_for(lambda: lock_holder(out / "repa") is None and lock_holder(out / "vanilla") is None, timeout=30,
             what="the children's locks to be released")


def test_a_truncated_latest_falls_back_to_the_newest_intact_step(tmp_path, capsys):
    run_dir, ref = tmp_path / "r", tmp_path / "ref"
    assert main_train(tiny(4, ref)) == 0
    shutil.copytree(ref, run_dir)
    ck = run_dir / "checkpoints"
    (ck / "step_0000004.pt").unlink()
    data = (ck / "latest.pt").read_bytes()
    (ck / "latest.pt").write_bytes(data[:len(data) // 2])
    code, err = run(tiny(4, run_dir), capsys)
    assert code == 0, err
    assert err.startswith("warning:") and "latest.pt" in err and "step_0000002.pt" in err and len(err.splitlines()) == 1, err
    assert_same_run(run_dir, ref)


def test_no_intact_checkpoint_is_one_line(tmp_path, capsys):
    run_dir = tmp_path / "r"
    assert main_train(tiny(2, run_dir)) == 0
    for p in (run_dir / "checkpoints").iterdir():
        p.write_bytes(b"junk")
    code, err = run(tiny(2, run_dir), capsys)
    assert code == 2
    one_line(err, "no intact checkpoint", "delete the folder")
    assert all(p.read_bytes() == b"junk" for p in (run_dir / "checkpoints").iterdir())  # nothing overwritten


def test_a_checkpoint_of_another_depth_in_the_run_directory(tmp_path, capsys):
    assert main_train(tiny(2, tmp_path / "deep", "--set", "model.depth=3")) == 0
    assert main_train(tiny(2, tmp_path / "r")) == 0
    shutil.copy(tmp_path / "deep" / "checkpoints" / "latest.pt", tmp_path / "r" / "checkpoints" / "latest.pt")
    code, err = run(tiny(4, tmp_path / "r"), capsys)
    assert code == 2
    one_line(err, "latest.pt does not fit this run's model", "move it out of")


def test_stale_temporaries_are_removed_on_start(tmp_path, capsys):
    run_dir = tmp_path / "r"
    assert main_train(tiny(2, run_dir)) == 0
    stale = [run_dir / "checkpoints" / ".latest.pt.abc123.tmp", run_dir / ".config.json.x1.tmp",
             run_dir / "samples" / ".step_0000002.png.q.tmp"]
    for p in stale:
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"partial")
    keep = run_dir / "notes.txt"
    keep.write_text("mine")
    assert main_train(tiny(2, run_dir)) == 0
    assert not any(p.exists() for p in stale) and keep.read_text() == "mine"


# ----------------------------------------------------------------------------------------------
# 6. writes that fail: disk full, read-only output
# ----------------------------------------------------------------------------------------------

def test_disk_full_while_saving_names_the_file_and_the_disk(tmp_path, capsys, monkeypatch):
    real = torch.save

    def full(obj, f, *a, **k):
        if isinstance(obj, dict) and obj.get("step") == 2:
            Path(f).write_bytes(b"part")
            raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0")
        real(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full)
    run_dir = tmp_path / "r"
    code, err = run(tiny(4, run_dir), capsys)
    assert code == 2
    one_line(err, "cannot write", "step_0000002.pt", "free on the disk of", "free space there")
    assert weights(run_dir / "checkpoints" / "latest.pt")["step"] == 0
    no_temporaries(run_dir)


def test_read_only_output_is_one_line(tmp_path, capsys, monkeypatch):
    import errno

    def read_only(self, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    code, err = run(tiny(2, tmp_path / "run"), capsys)
    assert code == 2
    one_line(err, str(tmp_path / "run"), "Read-only file system", "writable --out")


def test_an_out_path_that_is_a_file_is_one_line(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    code, err = run(tiny(2, f / "run"), capsys)
    assert code == 2
    one_line(err, str(f / "run"), "writable --out")
    assert f.read_text() == "x"


# ----------------------------------------------------------------------------------------------
# 5-7. caches: the fix each message names works; damaged shards are named, never kept
# ----------------------------------------------------------------------------------------------

LSIZE, SHARD = 32, 4


@pytest.fixture(scope="module")
def vae():
    from train.data.latents import SDVAECodec

    torch.manual_seed(0)
    return SDVAECodec(random_init=True)


def image_folder(root: Path, n: int = 6) -> Path:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for i in range(n):
        (root / ("cat" if i < n // 2 else "dog")).mkdir(parents=True, exist_ok=True)
        arr = torch.randint(0, 256, (40, 36, 3), generator=g, dtype=torch.uint8).numpy()
        Image.fromarray(arr).save(root / ("cat" if i < n // 2 else "dog") / f"{i}.png")
    return root


def test_a_failed_encode_resumes_once_the_bad_image_is_removed(tmp_path, vae):
    from train.data.datasets import LatentCacheDataset, build_latent_cache
    from train.errors import UserError

    root = image_folder(tmp_path / "imgs")
    bad = root / "dog" / "9.png"  # the last image: in the second shard
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "cache"
    with pytest.raises(UserError, match="remove or re-encode this file") as e:
        build_latent_cache(root, out, size=LSIZE, shard_size=SHARD, codec=vae, progress=False)
    assert "\n" not in str(e.value) and "9.png" in str(e.value)
    first = (out / "shard_00000.safetensors").stat().st_mtime_ns
    bad.unlink()  # the fix the message names; then the same command
    build_latent_cache(root, out, size=LSIZE, shard_size=SHARD, codec=vae, progress=False)
    assert (out / "shard_00000.safetensors").stat().st_mtime_ns == first  # the finished shard was kept
    assert len(LatentCacheDataset(out, size=LSIZE)) == 6
    no_temporaries(out)


def test_a_truncated_latent_shard_is_named_then_encoded_again(tmp_path, vae, capsys):
    from train.data.datasets import LatentCacheDataset, build_latent_cache, encode_main

    root, out = image_folder(tmp_path / "imgs"), tmp_path / "cache"
    build_latent_cache(root, out, size=LSIZE, shard_size=SHARD, codec=vae, progress=False)
    good = LatentCacheDataset(out, size=LSIZE)
    shard = out / "shard_00001.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[:len(data) // 2])
    code, err = run(["--preset", "tiny", "--steps", "1", "--no-progress", "--out", str(tmp_path / "run"), "--set",
                     "data.dataset=latents", f"data.root={out}", f"data.image_size={LSIZE}", "data.codec=sd-vae",
                     "data.random_init_vae=true", "model.in_channels=4", f"model.input_size={LSIZE // 8}", "model.name=SiT-T/2",
                     "proj_coeff=0", "model.z_dims=[]", "encoders=[]", "model.num_classes=2"], capsys)
    assert code == 2
    one_line(err, "shard_00001.safetensors is truncated", "rerun the same python -m train.data encode command")
    # the targets command refuses to build on it, naming the same fix
    argv = ["targets", "--cache", str(out), "--encoders", "builtin-teacher", "--grid", "2", "--random-init-encoders"]
    assert encode_main(argv) == 2
    one_line(capsys.readouterr().err.strip(), "shard_00001.safetensors is truncated", "encode command")
    # the fix works: the same encode encodes the damaged shard again (it no longer reports success over it)
    build_latent_cache(root, out, size=LSIZE, shard_size=SHARD, codec=vae, progress=False)
    assert "shard_00001.safetensors is unreadable or incomplete: encoding it again" in capsys.readouterr().err
    again = LatentCacheDataset(out, size=LSIZE)
    assert torch.equal(again.images, good.images) and torch.equal(again.mean, good.mean)
    no_temporaries(out)


def test_target_cache_advice_works(tmp_path, vae, capsys):
    from train.data.datasets import build_latent_cache, encode_main, open_target_cache, target_dir
    from train.errors import UserError
    from train.data.datasets import _load_encoders

    root, out = image_folder(tmp_path / "imgs"), tmp_path / "cache"
    build_latent_cache(root, out, size=LSIZE, shard_size=SHARD, codec=vae, progress=False)
    argv = ["targets", "--cache", str(out), "--encoders", "builtin-teacher", "--grid", "2", "--random-init-encoders"]
    assert encode_main(argv + ["--seed", "1"]) == 0  # targets of another encoder (other random weights)
    capsys.readouterr()
    enc = _load_encoders(["builtin-teacher"], None, 2, "cpu", True, 0)[0]
    with pytest.raises(UserError, match="another builtin-teacher encoder") as e:
        open_target_cache(out, enc)
    msg = str(e.value)
    assert "\n" not in msg and "--rebuild" in msg
    assert encode_main(argv) == 2  # without --rebuild the stored targets are not replaced by accident
    one_line(capsys.readouterr().err.strip(), "--rebuild")
    assert encode_main(argv + ["--rebuild"]) == 0  # the command the message names
    assert len(open_target_cache(out, enc)) == 6
    # a truncated target shard: one line naming the fix, and the fix (the same command) works
    shard = target_dir(out, "builtin-teacher") / "shard_00000.safetensors"
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(UserError, match="truncated or unreadable: rerun the same python -m train.data targets command"):
        open_target_cache(out, enc)
    assert encode_main(argv) == 0
    assert len(open_target_cache(out, enc)) == 6
    no_temporaries(out)


@pytest.mark.parametrize("junk", [b"junk", b"PK\x03\x04 not a zip", "hostile"])
def test_a_damaged_or_hostile_target_cache_pt_is_rebuilt(tmp_path, capsys, junk):
    run_dir, ref = tmp_path / "r", tmp_path / "ref"
    assert main_train(tiny(2, ref, "--set", "cache_targets=true")) == 0
    run_dir.mkdir()
    cache = run_dir / "target_cache.pt"
    if junk == "hostile":  # a pickle that would run code: refused by weights_only, then rebuilt
        import pickle

        class Boom:
            def __reduce__(self):
                return (os.system, ("touch " + str(tmp_path / "pwned"),))

        cache.write_bytes(pickle.dumps({"tokens": Boom()}))
    else:
        cache.write_bytes(junk)
    code, err = run(tiny(2, run_dir, "--set", "cache_targets=true"), capsys)
    assert code == 0, err
    assert not (tmp_path / "pwned").exists()
    assert_same_run(run_dir, ref)
    assert torch.load(cache, weights_only=True)["tokens"][0].shape[0] == 64


# ----------------------------------------------------------------------------------------------
# probes: NaN weights, too few images, Ctrl-C
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def probe_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("probe-run") / "r"
    assert main_train(tiny(2, run_dir)) == 0
    return run_dir


def run_probe(capsys, ckpt: Path, out: Path, *extra: str) -> tuple[int, str]:
    from probe.cli import main

    code = main(["sweep", "--checkpoint", str(ckpt), "--random-init-encoder", "--n-images", "16", "--n-train", "0",
                 "--t", "0", "--layers", "1", "--metrics", "mutual_knn", "cknna", "--k", "4", "--no-plot",
                 "--no-progress", "--out", str(out), *extra])
    return code, capsys.readouterr().err.strip()


def test_probing_a_checkpoint_with_nan_weights_is_refused(probe_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("REPA_CACHE", str(tmp_path / "cache"))
    state = weights(probe_run / "checkpoints" / "latest.pt")
    state["ema"]["blocks.0.attn.qkv.weight"].fill_(float("nan"))
    bad = tmp_path / "nan.pt"
    torch.save(state, bad)
    code, err = run_probe(capsys, bad, tmp_path / "out")
    assert code == 2
    one_line(err, "nan.pt", "NaN/inf", "blocks.0.attn.qkv.weight", "probe an earlier checkpoint")
    assert not (tmp_path / "out" / "layer_sweep.csv").exists()  # no plausible numbers written
    code, err = run_probe(capsys, probe_run / "checkpoints" / "latest.pt", tmp_path / "good")  # the healthy one probes
    assert code == 0, err
    assert (tmp_path / "good" / "layer_sweep.csv").exists()


def test_too_few_probe_images_for_the_metrics(probe_run, tmp_path, capsys):
    code, err = run_probe(capsys, probe_run / "checkpoints" / "latest.pt", tmp_path / "out", "--n-images", "3", "--k", "2")
    assert code == 2
    one_line(err, "n_images=3", "at least 4", "--n-images 4")


def test_ctrl_c_of_repa_probe_is_one_line(probe_run, tmp_path, capsys, monkeypatch):
    import probe.analyses

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(probe.analyses, "layer_sweep", interrupted)
    code, err = run_probe(capsys, probe_run / "checkpoints" / "latest.pt", tmp_path / "out")
    assert code == 2
    one_line(err, "interrupted", "run the same command again")


def test_nonfinite_features_are_refused_by_the_metrics():
    from probe.metrics import prepare
    from train.errors import UserError

    x = torch.randn(8, 4)
    x[3, 1] = float("nan")
    with pytest.raises(UserError, match="NaN or infinite"):
        prepare(x)


# ----------------------------------------------------------------------------------------------
# samples: a junk PNG in a folder being resumed, a junk .npz beside the real one
# ----------------------------------------------------------------------------------------------

def test_junk_png_and_junk_npz_in_a_samples_folder(probe_run, tmp_path, capsys, monkeypatch):
    import numpy as np

    from train.evaluation import evaluate as ev
    from train.run.cli import main_sample

    monkeypatch.setenv("REPA_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "s"
    args = ["--ckpt", str(probe_run / "checkpoints" / "latest.pt"), "--out", str(out), "--n", "4", "--batch-size", "2",
            "--steps", "2", "--device", "cpu", "--no-progress"]
    assert main_sample(args) == 0
    (npz,) = out.glob("samples_4x*.npz")
    with np.load(npz) as d:
        ref = d["arr_0"].copy()
    npz.unlink()
    (out / "images" / "000001.png").write_bytes(b"\x89PNG\r\n\x1a\n junk")  # cut by a crash of another tool
    assert main_sample(args) == 0  # resumed: the chunk with the junk PNG is sampled again
    with np.load(npz) as d:
        assert np.array_equal(d["arr_0"], ref)
    (out / "samples_junk.npz").write_bytes(b"PK\x03\x04 junk")
    images, _ = ev.load_samples(out)  # the junk .npz beside the real one is passed over
    assert torch.equal(images, torch.from_numpy(ref).permute(0, 3, 1, 2))
    with pytest.raises(ev.UserError, match="not a readable samples .npz") as e:
        ev.load_samples(out / "samples_junk.npz")
    assert "\n" not in str(e.value)
    no_temporaries(out)



# ----------------------------------------------------------------------------------------------
# a safetensors export missing a tensor, sampled from the CLI
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("drop", ["x_embedder.proj.weight", "final_layer.linear.weight"])
def test_an_export_missing_a_tensor_is_one_line_when_sampled(tmp_path, capsys, drop):
    from safetensors.torch import save_file

    from train.run.cli import main_sample
    from train.models.loading import build

    model = build("SiT-S/8", input_size=16, in_channels=3, num_classes=4, depth=1)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != drop}
    save_file(state, str(tmp_path / "SiT-S-8.safetensors"))
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main_sample(["--ckpt", str(tmp_path / "SiT-S-8.safetensors"), "--out", str(tmp_path / "s"), "--n", "2",
                        "--steps", "1", "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    one_line(err, f"lacks the tensor '{drop}'", "export or download it again")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "s") == before
