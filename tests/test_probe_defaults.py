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

    teachers = {"repa": ("fashion-ssl", "fashion-supervised"), "vanilla": ("fashion-ssl",)}
    for run in ("repa", "vanilla"):  # the vanilla twin records its REPA twin's first encoder
        found = trained_on(load(pair[run]))
        assert found == {"dataset": "fashion-mnist", "data_root": None, "codec": "grey", "encoders": teachers[run],
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


def test_a_two_teacher_run_is_probed_against_its_first_teacher_by_default(pair):
    from probe.analyses import layer_sweep

    df = layer_sweep(pair["repa"], n_images=16, n_train=0, ts=(0.0,), metrics=("cknna",), k=3, layers=(1,),
                     random_init_encoder=True, progress=False)
    assert set(df.loc[~df["is_reference"].astype(bool), "target"]) == {"fashion-ssl"}


def test_each_teacher_is_read_through_its_own_projector(pair):
    """A run aligned to two teachers has one projector each (in the order of its encoders): the projection
    cosine and the projector maps against a teacher use that teacher's projector, and agree (the maps'
    mean is the projection cosine); a teacher the run was not aligned to is refused."""
    from probe.analyses import projection_alignment
    from probe.patch_alignment import patch_alignment
    from train.errors import UserError

    kw = dict(n_images=8, ts=(0.0,), random_init_encoder=True, progress=False)
    cos = {}
    for head, enc in enumerate(("fashion-ssl", "fashion-supervised")):
        df = projection_alignment(pair["repa"], encoder=enc, labels=("null",), weights=("ema",), baseline_images=0, **kw)
        assert set(df["projector"]) == {head} and set(df["target"]) == {enc}
        cos[enc] = df["value"].item()
        maps = patch_alignment(pair["repa"], methods=("projector",), encoder=enc, seed=0, **kw)
        assert float(maps.maps[0].astype("float64").mean()) == pytest.approx(cos[enc], abs=1e-6)
    assert cos["fashion-ssl"] != cos["fashion-supervised"]
    with pytest.raises(UserError, match="projectors were trained against fashion-ssl, fashion-supervised, not builtin-ssl"):
        projection_alignment(pair["repa"], encoder="builtin-ssl", labels=("null",), weights=("ema",), baseline_images=0, **kw)

