"""Probes default to what the checkpoint was trained on: its dataset, codec and target encoder
(probe.run_defaults); checkpoints that record no run keep the old defaults."""

import pytest

from conftest import random_sit, save_ckpt


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A 2-step REPA/vanilla pair on the default preset (Fashion-MNIST stand-in, grey codec, fashion-ssl
    teacher with random weights)."""
    from train.run.cli import side_by_side
    from train.run.config import override, preset

    out = tmp_path_factory.mktemp("pair")
    cfg = override(preset("tiny"), ["steps=2", "batch_size=8", "random_init_encoders=true", "model.depth=2", "model.hidden_size=32",
                                    "model.num_heads=2", "model.encoder_depth=1", "model.projector_dim=32", "data.n_train=64",
                                    "sample_every=0", "eval_every=0", "align_every=0", "threads=1"])
    side_by_side(cfg, out, progress=False)
    return {run: out / run / "checkpoints" / "latest.pt" for run in ("repa", "vanilla")}


def test_trained_on_reads_the_run(pair):
    from probe.run_defaults import trained_on
    from train.models.loading import load

    for run in ("repa", "vanilla"):  # the vanilla twin records its REPA twin's encoder
        found = trained_on(load(pair[run]))
        assert found == {"dataset": "fashion-mnist", "data_root": None, "codec": "grey", "encoders": ("fashion-ssl",),
                         "source": "checkpoint"}


def test_layer_sweep_defaults_to_the_checkpoints_data_codec_and_teacher(pair):
    from probe.analyses import layer_sweep

    df = layer_sweep(pair["vanilla"], n_images=24, n_train=0, ts=(0.0,), metrics=("cknna",), k=3,
                     random_init_encoder=True, progress=False)
    assert set(df["dataset"]) == {"fashion-mnist/val"} and set(df["codec"]) == {"grey"}
    assert set(df.loc[~df["is_reference"].astype(bool), "target"]) == {"fashion-ssl"}
    assert df["value"].notna().all() and set(df["layer"]) == {0, 1, 2}


def test_explicit_choices_win_and_unrecorded_checkpoints_fall_back(tmp_path):
    from probe.analyses import layer_sweep
    from probe.run_defaults import trained_on

    ckpt = save_ckpt(random_sit(16, 2), tmp_path / "plain.pt", step=0)  # no run recorded
    from train.models.loading import load

    assert trained_on(load(ckpt))["source"] == "fallback"
    df = layer_sweep(ckpt, "scenes", encoders=("builtin-ssl",), n_images=24, n_train=0, ts=(0.0,), metrics=("cknna",), k=3,
                     random_init_encoder=True, progress=False)
    assert set(df["dataset"]) == {"scenes/val"} and set(df.loc[~df["is_reference"].astype(bool), "target"]) == {"builtin-ssl"}
    assert set(df["codec"]) == {"identity"}
