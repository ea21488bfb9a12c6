"""The main job's task graph (probe.demo): order, dependencies, failures, and the plan it builds."""

import argparse
import os
import time
from pathlib import Path

import pandas as pd
import pytest

from probe.demo import Task, plan, run_graph
from train.errors import UserError


def stamp(path: str, name: str, wait_for: str | None = None) -> float:
    """Append ``start name`` to ``path``; with ``wait_for``, wait (30 s at most) until that task has
    started too; append ``end name``; return the end time."""
    with open(path, "a") as f:
        f.write(f"start {name}\n")
    deadline = time.time() + (30 if wait_for else 0.2)
    while time.time() < deadline and not (wait_for and f"start {wait_for}" in Path(path).read_text()):
        time.sleep(0.05)
    with open(path, "a") as f:
        f.write(f"end {name}\n")
    return time.time()


def fail(message: str) -> None:
    raise UserError(message)


def test_graph_runs_each_task_after_its_dependencies(tmp_path):
    log = str(tmp_path / "log")
    tasks = [Task("c", stamp, (log, "c"), ("a", "b")), Task("a", stamp, (log, "a", "d")), Task("b", stamp, (log, "b"), ("a",)),
             Task("d", stamp, (log, "d"))]
    lines = []
    results = run_graph(tasks, jobs=2, say=lines.append)
    events = Path(log).read_text().split("\n")[:-1]
    assert set(results) == {"a", "b", "c", "d"}
    for before, after in (("a", "b"), ("a", "c"), ("b", "c")):
        assert events.index(f"end {before}") < events.index(f"start {after}")
    assert results["a"] < results["b"] < results["c"]
    # two workers: "d" (ready at once, listed after "a") runs beside "a", which waits for it to start
    assert events.index("start d") < events.index("end a")
    assert sum(" done " in line for line in lines) == 4


def thread_settings() -> tuple:
    """What a worker sees: the OpenMP variable, torch's threads, and every loaded BLAS/OpenMP pool's threads."""
    import scipy.linalg  # noqa: F401  (loads scipy's own BLAS, as scikit-learn's probes do)
    import torch
    from threadpoolctl import threadpool_info

    return os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads(), {i["num_threads"] for i in threadpool_info()}


def test_graph_workers_use_one_thread_each(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    results = run_graph([Task("threads", thread_settings)], jobs=1, say=lambda line: None)
    assert results["threads"] == ("1", 1, {1})
    assert os.environ["OMP_NUM_THREADS"] == "7" and "OPENBLAS_NUM_THREADS" not in os.environ  # this process's restored


def test_graph_failure_names_the_task(tmp_path):
    tasks = [Task("ok", stamp, (str(tmp_path / "log"), "ok")), Task("bad", fail, ("no weights: pass --x",), ("ok",)),
             Task("after", stamp, (str(tmp_path / "log"), "after"), ("bad",))]
    with pytest.raises(UserError, match="^bad: no weights: pass --x$"):
        run_graph(tasks, jobs=1, say=lambda line: None)
    assert "after" not in (tmp_path / "log").read_text()


def test_graph_failure_stops_running_tasks(tmp_path):
    log = str(tmp_path / "log")
    tasks = [Task("slow", stamp, (log, "slow", "never")), Task("bad", fail, ("broken: fix it",))]
    start = time.time()
    with pytest.raises(UserError, match="^bad: broken: fix it$"):
        run_graph(tasks, jobs=2, say=lambda line: None)
    assert time.time() - start < 25  # "slow" would wait 30 s for a task that never starts: it was stopped
    # on a busy machine "bad" can fail before "slow"'s worker has even started it: no log at all
    assert "end slow" not in (Path(log).read_text() if Path(log).exists() else "")


def test_graph_rejects_unknown_dependencies_and_cycles():
    with pytest.raises(ValueError, match="dependencies"):
        run_graph([Task("a", time.time, (), ("missing",))], jobs=1, say=lambda line: None)
    with pytest.raises(ValueError, match="cycle"):
        run_graph([Task("a", time.time, (), ("b",)), Task("b", time.time, (), ("a",))], jobs=1, say=lambda line: None)


def test_plan_with_the_control_arm(tmp_path):
    args = argparse.Namespace(seeds=[0], steps=200, set=[], out=tmp_path, n_images=40, n_train=30, control=True)
    job = plan(args)
    by_name = {t.name: t for t in job.tasks}
    assert set(job.run_dirs) == {(0, r) for r in ("repa", "vanilla", "control")}
    # the REPA arms start once their teacher's tokens are cached (one task for all of them); vanilla after
    # the evaluator's reference statistics
    assert by_name["train control seed 0"].deps == by_name["train repa seed 0"].deps == ("targets",)
    assert by_name["targets"].deps == ("teacher",) and by_name["train vanilla seed 0"].deps == ("evaluator",)
    cfg = by_name["train control seed 0"].args[0]
    assert cfg["target_shuffle"] == "image" and cfg["proj_coeff"] > 0 and "probe control seed 0" in by_name
    # the control reads other images' cached tokens: with it every arm keeps the target cache ...
    assert all(t.args[0]["cache_targets"] for t in job.tasks if t.name.startswith("train "))
    # the control is evaluated at every second evaluation step of the other arms, the rest of its config theirs
    repa_cfg = by_name["train repa seed 0"].args[0]
    assert cfg["eval_every"] == 2 * repa_cfg["eval_every"] > 0
    assert {k: v for k, v in cfg.items() if k not in ("eval_every", "target_shuffle")} == \
        {k: v for k, v in repa_cfg.items() if k not in ("eval_every", "target_shuffle")}
    # ... which the main job alone runs without (the teacher on each batch: 300 steps see a sixth of the images)
    alone = plan(argparse.Namespace(**{**vars(args), "control": False, "steps": None}))
    repa = next(t for t in alone.tasks if t.name == "train repa seed 0")
    assert not repa.args[0]["cache_targets"] and repa.args[0]["steps"] == 300 and repa.args[0]["eval_every"] == 150
    assert repa.deps == ("teacher",) and "targets" not in {t.name for t in alone.tasks}


def test_plan_starts_the_longest_training_runs_first(tmp_path):
    args = argparse.Namespace(seeds=[0, 1, 2], steps=200, set=[], out=tmp_path, n_images=40, n_train=30, control=True)
    order = [t.name for t in plan(args).tasks if t.name.startswith("train ")]
    assert order == [f"train {arm} seed {s}" for arm in ("repa", "vanilla", "control") for s in (0, 1, 2)]


def test_plan_probes_every_checkpoint_of_every_run(tmp_path, monkeypatch):
    args = argparse.Namespace(seeds=[3, 4], steps=200, set=["ckpt_every=50"], out=tmp_path, n_images=40, n_train=30)
    job = plan(args)
    by_name = {t.name: t for t in job.tasks}
    assert job.align_depth == 2
    assert set(job.run_dirs) == {(s, r) for s in (3, 4) for r in ("repa", "vanilla")}
    assert by_name["train repa seed 3"].deps == ("teacher",)  # REPA starts once its teacher is loaded
    assert by_name["train vanilla seed 3"].deps == ("evaluator",)  # vanilla does not wait for the teacher
    ckpts, seed, options, part, dataset, encoder = by_name["probe vanilla seed 4"].args
    assert (dataset, encoder) == ("fashion-mnist", "fashion-ssl")  # the preset's data and teacher
    assert [Path(c).name for c in ckpts] == [f"step_{s:07d}.pt" for s in (0, 50, 100, 200)]  # log series + final
    assert Path(ckpts[0]).parent == tmp_path / "seed4" / "vanilla" / "checkpoints"
    assert seed == 4 and options["n_images"] == 40 and options["n_train"] == 30
    assert by_name["projection seed 3"].args[0] == str(tmp_path / "seed3" / "repa" / "checkpoints" / "step_0000200.pt")
    cfg = by_name["train repa seed 3"].args[0]
    assert cfg["seed"] == 3 and cfg["threads"] == 1 and cfg["steps"] == 200
    assert by_name["train vanilla seed 3"].args[0]["proj_coeff"] == 0
    # the tables wait for every probe; the figures for the tables
    probes = {n for n in by_name if n.startswith(("probe ", "projection ", "teachers "))}
    assert len(probes) == 10 and set(by_name["tables"].deps) == {"teacher", *probes}
    # two teachers (the preset's): the aligned block of every run's last checkpoint against both
    ckpt, seed, _, part, dataset, encoders, layer = by_name["teachers vanilla seed 4"].args
    assert (ckpt, seed, encoders, layer) == (ckpts[-1], 4, ("fashion-ssl", "fashion-supervised"), 2)
    assert by_name["tables"].args[6] == [by_name[f"teachers {r} seed {s}"].args[3] + ".parquet" for s in (3, 4) for r in ("repa", "vanilla")]
    assert by_name["tables"].args[7] == ("fashion-supervised",)  # the cards of the teachers after the first
    one = {t.name for t in plan(argparse.Namespace(**{**vars(args), "set": ["encoders=fashion-ssl", "model.z_dims=128"]})).tasks}
    assert not any(n.startswith("teachers ") for n in one)  # one teacher: the sweep holds it all
    assert {n for n in by_name if n.startswith("figures ")} == {f"figures {w}" for w in ("training", "cknna", "cka", "mutual_knn", "linear_probe")}
    assert all(by_name[n].deps == ("tables",) for n in by_name if n.startswith("figures "))
    assert by_name["tables"].args[0] == [by_name[f"probe {r} seed {s}"].args[3] + ".parquet" for s in (3, 4) for r in ("repa", "vanilla")]
    # a probe table is reused only for the same checkpoints and settings
    again = {t.name: t for t in plan(args).tasks}
    assert again["probe repa seed 3"].args[3] == by_name["probe repa seed 3"].args[3]
    other = {t.name: t for t in plan(argparse.Namespace(**{**vars(args), "n_train": 31})).tasks}
    assert other["probe repa seed 3"].args[3] != by_name["probe repa seed 3"].args[3]
    monkeypatch.chdir(tmp_path.parent)  # the same directory spelt relatively: the same parts
    relative = {t.name: t for t in plan(argparse.Namespace(**{**vars(args), "out": Path(tmp_path.name)})).tasks}
    assert relative["probe repa seed 3"].args == by_name["probe repa seed 3"].args


def test_plan_asks_for_token_level_metrics_only_when_told(tmp_path):
    base = dict(seeds=[0], steps=20, set=[], out=tmp_path, n_images=40, n_train=30)
    default = {t.name: t for t in plan(argparse.Namespace(**base)).tasks}
    assert "metrics" not in default["probe repa seed 0"].args[2]  # the default's part keys are unchanged
    asked = {t.name: t for t in plan(argparse.Namespace(**base, metrics=["cknna", "linear_probe", "lds", "cknna_token"])).tasks}
    assert asked["probe repa seed 0"].args[2]["metrics"] == ("cknna", "linear_probe", "lds", "cknna_token")
    assert asked["probe repa seed 0"].args[3] != default["probe repa seed 0"].args[3]
    assert {n for n in asked if n.startswith("figures ")} == {f"figures {w}" for w in ("training", "cknna", "linear_probe", "lds", "cknna_token")}
    with pytest.raises(UserError, match="unknown metric 'srss'"):
        plan(argparse.Namespace(**base, metrics=["srss"]))


@pytest.mark.parametrize("change, message", [
    ({"steps": 0}, "steps 0 is not an integer >= 1"),  # 0 is not "the preset's default"
    ({"n_images": 10}, "n_images=10 evaluation images for k=10"),
    ({"n_train": 1}, "n_train=1"),
])
def test_plan_rejects_bad_settings_before_anything_runs(tmp_path, change, message):
    args = argparse.Namespace(**{**dict(seeds=[0], steps=20, set=[], out=tmp_path, n_images=40, n_train=30), **change})
    with pytest.raises(UserError, match=message):
        plan(args)
    assert not any(tmp_path.iterdir())


def test_cached_part_is_reused_for_the_same_input_files_only(tmp_path):
    from probe.demo import _cached_table

    ckpt = tmp_path / "step_0000100.pt"
    ckpt.write_bytes(b"first run")
    calls = []

    def compute():
        calls.append(1)
        return pd.DataFrame({"value": [float(len(calls))]})

    part = tmp_path / "parts" / "probe_seed0_repa_abc"
    first = _cached_table(part, compute, [str(ckpt)])
    assert _cached_table(part, compute, [str(ckpt)]) == first and len(calls) == 1  # reused
    ckpt.write_bytes(b"retrained in place")  # same path, another file
    _cached_table(part, compute, [str(ckpt)])
    assert len(calls) == 2 and pd.read_parquet(first)["value"].tolist() == [2.0]


def test_maps_task_draws_token_pca_and_patch_alignment_of_both_runs(tmp_path, monkeypatch):
    """The demo's map figures on a seconds-long REPA/vanilla pair (random-weight teacher)."""
    from probe.demo import task_maps
    from train.run.cli import side_by_side
    from train.run.config import override, preset

    monkeypatch.setenv("REPA_CACHE", str(tmp_path / "cache"))
    cfg = override(preset("tiny"), ["steps=2", "batch_size=8", "random_init_encoders=true", "model.depth=3", "model.hidden_size=32",
                                    "model.num_heads=2", "model.encoder_depth=1", "model.projector_dim=32", "data.n_train=64",
                                    "sample_every=0", "eval_every=0", "threads=1"])
    side_by_side(cfg, tmp_path / "pair", progress=False)
    ckpt = lambda run: str(tmp_path / "pair" / run / "checkpoints" / "latest.pt")  # noqa: E731
    paths = task_maps(ckpt("repa"), ckpt("vanilla"), cfg.data.dataset, cfg.encoders[0], 1, 3, 0, str(tmp_path / "fig"),
                      str(tmp_path / "tables"), random_init_encoder=True)
    assert {Path(p).name for p in paths} == {"token_pca.png", "token_pca.pdf", "patch_alignment.png", "patch_alignment.pdf"}
    pa = pd.read_csv(tmp_path / "tables" / "patch_alignment.csv")
    assert sorted(set(zip(pa["run"], pa["method"]))) == [("REPA", "projector"), ("REPA", "ridge"), ("vanilla", "ridge")]
    assert set(pa["layer"]) == {1} and set(pa["t"]) == {0.0, 0.5} and pa["value"].between(-1, 1).all()
    pca = pd.read_csv(tmp_path / "tables" / "token_pca.csv")
    assert set(pca.loc[pca.source == "model", "layer"]) == {1, 3} and set(pca["run"]) == {"REPA", "vanilla"}
    # with two teachers: the aligned block against both, and against the first exactly the sweep's value
    from probe.analyses import load_table
    from probe.demo import task_probe, task_teachers

    opts = {"n_images": 16, "n_train": 0, "metrics": ("cknna",), "k": 3, "random_init_encoder": True, "store": str(tmp_path / "store")}
    for run in ("repa", "vanilla"):
        sweep = load_table(task_probe([ckpt(run)], 0, opts, str(tmp_path / "parts" / f"probe_{run}"), cfg.data.dataset, cfg.encoders[0]))
        both = load_table(task_teachers(ckpt(run), 0, opts, str(tmp_path / "parts" / f"teachers_{run}"), cfg.data.dataset,
                                        cfg.encoders, 1))
        both = both[~both["is_reference"].astype(bool)]
        assert sorted(both["target"]) == ["fashion-ssl", "fashion-supervised"] and set(both["layer"]) == {1}
        assert set(both["t"]) == {0.0} and set(both["label"]) == {"null"} and set(both["pooling"]) == {"mean"}
        at = sweep[(sweep.layer == 1) & (sweep.t == 0) & ~sweep["is_reference"].astype(bool)]["value"].item()
        assert both.loc[both.target == "fashion-ssl", "value"].item() == pytest.approx(at, abs=1e-9)


def test_plan_draws_the_maps_from_the_first_seeds_final_checkpoints(tmp_path):
    job = plan(argparse.Namespace(seeds=[5, 6], steps=40, set=[], out=tmp_path, n_images=40, n_train=30))
    maps = {t.name: t for t in job.tasks}["maps"]
    assert maps.deps == ("train repa seed 5", "train vanilla seed 5", "teacher")
    repa, vanilla, dataset, encoder, align, deeper, seed = maps.args[:7]
    assert repa == str(tmp_path / "seed5" / "repa" / "checkpoints" / "step_0000040.pt") and "vanilla" in vanilla
    assert (dataset, encoder, align, deeper, seed) == ("fashion-mnist", "fashion-ssl", 2, 4, 5)


def test_the_samples_figure_puts_each_step_both_runs_have_in_a_row(tmp_path):
    from PIL import Image

    from probe import plots

    paths = {}
    for run, steps in (("repa", (500, 1000, 1500)), ("vanilla", (500, 1000))):
        (tmp_path / run).mkdir()
        for s in steps:
            Image.new("RGB", (182, 74), (s % 255, 0, 0)).save(tmp_path / run / f"step_{s:07d}.png")
        paths[run] = [str(tmp_path / run / f"step_{s:07d}.png") for s in (500, 1000, 1500)]
    out = plots.sample_grids(paths, tmp_path / "fig")
    assert {Path(p).name for p in out} >= {"samples.png"}
    one_row = plots.sample_grids({r: p[:1] for r, p in paths.items()}, tmp_path / "one")
    h2 = Image.open(next(p for p in out if str(p).endswith(".png"))).size[1]
    h1 = Image.open(next(p for p in one_row if str(p).endswith(".png"))).size[1]
    assert 1.6 < h2 / h1 < 2.2  # two rows (500 and 1,000: the steps both runs have), not three
    assert plots.sample_grids({"repa": [str(tmp_path / "none.png")]}, tmp_path / "x") == []


def test_main_copies_every_table_to_the_figures_folder(tmp_path, monkeypatch):
    """The tables the graph writes, the two-teacher alignment table included, land in ``--figures``/tables."""
    import probe.demo as demo

    out, figures = tmp_path / "out", tmp_path / "figures"
    names = ["probe.csv", "probe.json", "projection_alignment.csv", "projection_alignment.json", "training_metrics.csv",
             "results.md", "token_pca.csv", "patch_alignment.csv", "live_alignment.csv", "teacher_alignment.csv",
             "teacher_alignment.json"]

    def graph(tasks, jobs, say):  # what the tasks would have written
        (out / "tables").mkdir(parents=True)
        for name in names:
            (out / "tables" / name).write_text(name)
        return {t.name: [] for t in tasks}

    monkeypatch.setattr(demo, "run_graph", graph)
    assert demo.main(["--out", str(out), "--figures", str(figures), "--steps", "2"]) == 0
    assert sorted(p.name for p in (figures / "tables").iterdir()) == sorted(names)


def test_training_curves_leave_out_class_accuracy_for_unconditional_runs(tmp_path):
    """An unconditional model ignores the label asked for: its class accuracy is chance, so no panel."""
    from probe.plots import curve_panels

    logs = pd.DataFrame({"step": [0, 10], "denoise_loss": [1.0, 0.5], "proj_loss": [-0.1, -0.5],
                         "fd": [None, 30.0], "class_acc": [None, 0.1], "class_confidence": [None, 0.7]})
    assert curve_panels(logs) == ["denoise_loss", "proj_loss", "fd", "class_acc", "class_confidence"]
    assert curve_panels(logs, conditional=False) == ["denoise_loss", "proj_loss", "fd", "class_confidence"]
    args = argparse.Namespace(seeds=[0], steps=200, set=[], out=tmp_path, n_images=40, n_train=30, control=False)
    assert plan(args).conditional is False  # the built-in default drops every label
    args.set = ["model.class_dropout_prob=0.1"]
    job = plan(args)
    assert job.conditional is True and next(t for t in job.tasks if t.name == "figures training").args[-1] is True
