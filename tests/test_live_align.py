"""Live alignment during training (train.run.live_align): logged values equal an offline probe."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from probe.analyses import ProbeConfig, layer_sweep
from train.run.cli import as_vanilla, main_train
from train.run.config import TrainConfig
from train.run.live_align import LiveAlignment
from train.run.loop import train
from test_train import micro

pytestmark = pytest.mark.filterwarnings("ignore:linear probes get only")


def _live(run) -> pd.DataFrame:
    m = pd.read_json(run / "metrics.jsonl", lines=True)
    return m[m["align/seconds"].notna()].set_index("step")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("live")
    cfg = micro(align_every=2, align_images=40, align_train_images=24, align_token_samples=200, align_layers=[1, 2])
    train(cfg, root / "repa", progress=False)
    train(as_vanilla(cfg), root / "vanilla", progress=False)
    return cfg, root


def test_live_metrics_are_logged_every_align_every_steps(runs):
    cfg, root = runs
    for name in ("repa", "vanilla"):
        live = _live(root / name)
        assert list(live.index) == [0, 2, 4]
        for metric in ("cknna", "cknna_token", "lds", "linear_probe"):
            for layer in (1, 2):
                for t in ("0", "0.5"):
                    v = live[f"align/{metric}/layer{layer}/t{t}"]
                    assert v.notna().all() and v.between(-1, 1).all(), (name, metric, layer, t)
        assert live.loc[0, "align/lds/encoder"] == pytest.approx(_live(root / "repa").loc[0, "align/lds/encoder"])
    # twins share the initialisation, so they agree at step 0 and part afterwards
    a, b = _live(root / "repa"), _live(root / "vanilla")
    assert a.loc[0, "align/cknna/layer1/t0"] == pytest.approx(b.loc[0, "align/cknna/layer1/t0"], abs=1e-6)
    assert a.loc[4, "align/cknna/layer1/t0"] != b.loc[4, "align/cknna/layer1/t0"]


def test_live_values_equal_an_offline_probe_of_the_same_ema_weights(runs):
    cfg, root = runs
    probe = LiveAlignment.__new__(LiveAlignment)
    probe.cfg, probe.ts, probe.layers = cfg, [float(t) for t in cfg.align_ts], list(cfg.align_layers)
    settings = probe.probe_settings()
    dataset = settings.pop("dataset")
    df = layer_sweep(root / "repa" / "checkpoints" / "step_0000004.pt", dataset, encoders=cfg.encoders,
                     config=ProbeConfig(**settings, random_init_encoder=True, progress=False))
    live = _live(root / "repa").loc[4]
    rows = df[~df["is_reference"]]
    assert len(rows) == 4 * 2 * 2
    for r in rows.itertuples():
        assert live[f"align/{r.metric}/layer{r.layer}/t{r.t:g}"] == pytest.approx(r.value, abs=1e-5), (r.metric, r.layer, r.t)
    ref = df[df["is_reference"] & (df["metric"] == "lds")]["value"].item()
    assert _live(root / "repa").loc[0, "align/lds/encoder"] == pytest.approx(ref, abs=1e-6)


def test_measuring_changes_no_weight(tmp_path):
    cfg = micro(steps=3, ckpt_every=3)
    train(cfg, tmp_path / "off", progress=False)
    train(micro(steps=3, ckpt_every=3, align_every=1, align_images=20, align_train_images=0, align_token_samples=50),
          tmp_path / "on", progress=False)
    a, b = (torch.load(tmp_path / r / "checkpoints" / "latest.pt", weights_only=True) for r in ("off", "on"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert "align/linear_probe/layer1/t0" not in _live(tmp_path / "on").columns  # 0 train images: no probe


def test_bad_live_settings_are_one_line(capsys):
    bad = {"align_layers=[9]": "align_layers", "align_ts=[2]": "align_ts", "align_images=5": "align_images",
           "align_train_images=1": "align_train_images"}
    for setting, field in bad.items():
        code = main_train(["--preset", "tiny", "--dry-run", "--set", "align_every=10", setting])
        err = capsys.readouterr().err.strip()
        assert code != 0 and field in err and len(err.splitlines()) == 1, (setting, err)
    cfg = as_vanilla(TrainConfig())
    assert cfg.align_encoder == TrainConfig().encoders[0]


def test_live_rows_and_figure(runs, tmp_path):
    from probe.plots import live_alignment
    from probe.summary import live_rows

    cfg, root = runs
    logs = pd.concat([pd.read_json(root / r / "metrics.jsonl", lines=True).assign(run=r, seed=0) for r in ("repa", "vanilla")])
    rows = live_rows(logs)
    assert set(rows["metric"]) == {"cknna", "cknna_token", "lds", "linear_probe"} and set(rows["layer"]) == {1, 2}
    assert len(rows) == 2 * 3 * 4 * 2 * 2  # runs x steps x metrics x layers x ts
    one = rows[(rows.run == "repa") & (rows.step == 4) & (rows.metric == "cknna") & (rows.layer == 2) & (rows.t == 0.5)]
    assert one["value"].item() == _live(root / "repa").loc[4, "align/cknna/layer2/t0.5"]
    paths = live_alignment(rows, tmp_path)
    assert paths[0].exists() and paths[0].stat().st_size > 10_000


def test_the_demo_trains_with_live_alignment_and_draws_it(runs, tmp_path):
    from probe.demo import LIVE_EVERY, demo_config, task_figures
    from probe.summary import live_rows

    assert demo_config(0, 300).align_every == LIVE_EVERY and demo_config(0, 300, ["align_every=0"]).align_every == 0
    cfg, root = runs
    logs = pd.concat([pd.read_json(root / r / "metrics.jsonl", lines=True).assign(run=r, seed=0) for r in ("repa", "vanilla")])
    tables = tmp_path / "tables"
    tables.mkdir()
    logs.to_csv(tables / "training_metrics.csv", index=False)
    live_rows(logs).to_csv(tables / "live_alignment.csv", index=False)
    paths = task_figures(str(tables), str(tmp_path / "fig"), "training", 1, {})
    assert {Path(p).name for p in paths} >= {"training_curves.png", "live_alignment.png"}


def test_live_alignment_filled_from_checkpoints_equals_what_the_loop_logged(runs, tmp_path):
    """studies.fill_evals --live: a run trained without live alignment and resumed with it (a study run
    linked into make extended) gets the values the loop would have logged at its checkpoints."""
    import shutil

    from studies.fill_evals import fill_live, missing_live_steps

    cfg, root = runs
    run = tmp_path / "run"
    shutil.copytree(root / "repa", run)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    kept = [ln for ln in lines if not ("align/seconds" in json.loads(ln) and json.loads(ln)["step"] in (2, 4))]
    assert len(kept) == len(lines) - 2
    (run / "metrics.jsonl").write_text("".join(ln + "\n" for ln in kept))
    assert missing_live_steps(run, cfg) == [2, 4]
    fill_live(run, cfg)
    assert missing_live_steps(run, cfg) == []
    logged, filled = _live(root / "repa"), _live(run)
    assert list(filled.index) == [0, 2, 4] and filled.loc[[2, 4], "filled"].all()
    for col in [c for c in logged.columns if c.startswith("align/") and c != "align/seconds"]:
        for step in (2, 4):
            assert filled.loc[step, col] == pytest.approx(logged.loc[step, col], abs=1e-6, nan_ok=True), (col, step)
