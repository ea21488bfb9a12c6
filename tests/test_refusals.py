"""Issue 22: the six inputs a new user tried that ended badly, each as it is answered now; and one
field turns an objective on (HASTE, SRA, REG defaults scaled to the model)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from train.run.cli import main_sample, main_train

TINY = ["--preset", "tiny", "--no-progress", "--threads", "1", "--set", "random_init_encoders=true", "model.depth=2",
        "model.hidden_size=32", "model.num_heads=2", "model.encoder_depth=1", "model.projector_dim=64", "data.n_train=64",
        "batch_size=8", "log_every=1", "sample_every=0", "eval_every=0"]


def call(main, argv, capsys):
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.err.strip(), out.out.strip()


def one_line(err: str, *words: str) -> None:
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)


# ----------------------------------------------------------------------------------------------
# the six cases of the issue
# ----------------------------------------------------------------------------------------------

def test_negative_guidance_scale_is_refused_before_sampling(tmp_path, capsys):
    ck = tmp_path / "ck.pt"
    ck.write_bytes(b"never loaded")
    code, err, out = call(main_sample, ["--ckpt", str(ck), "--out", str(tmp_path / "s"), "--cfg-scale", "-3", "--n", "2"], capsys)
    assert code == 2 and out == ""
    one_line(err, "--cfg-scale", "'-3'", ">= 0")
    assert not (tmp_path / "s").exists()


def test_a_string_for_an_integer_field_is_refused_even_when_a_flag_overrides_it(tmp_path, capsys):
    code, err, out = call(main_train, [*TINY, "--set", "steps=abc", "--steps", "2", "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and out == ""
    one_line(err, "steps 'abc'", "is not an integer", "use a positive integer")
    assert not (tmp_path / "r").exists()


def test_fid_on_a_folder_of_one_sample_names_what_is_missing(tmp_path, capsys):
    from train.evaluation.evaluate import main

    (tmp_path / "s").mkdir()
    np.savez(tmp_path / "s" / "samples_1x16x16x3.npz", arr_0=np.zeros((1, 16, 16, 3), np.uint8))
    code, err, out = call(main, ["fid", "--samples", str(tmp_path / "s"), "--dataset", "scenes", "--no-progress"], capsys)
    assert code == 2 and out == ""
    one_line(err, "holds 1 sample", "at least 4", "repa-sample --ckpt CKPT --num-samples")
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["samples_1x16x16x3.npz"]


@pytest.mark.parametrize("content,words", [
    ("a,b\n1,2\n", ["lacks the column(s) run, step, layer, t, metric, target, value, is_reference", "repa-probe sweep"]),
    ("run,step,layer,t,metric,target,value,is_reference\nx,0,-1,0,linear_probe,enc,0.5,True\n", ["no measured rows", "repa-probe sweep"]),
    (b"\x00\xff\xfe junk", ["not a readable csv table", "repa-probe sweep"]),
])
def test_plot_on_a_table_repa_probe_did_not_write(tmp_path, capsys, content, words):
    from probe.cli import main

    junk = tmp_path / "junk.csv"
    junk.write_bytes(content if isinstance(content, bytes) else content.encode())
    code, err, out = call(main, ["plot", "--table", str(junk), "--out", str(tmp_path / "fig")], capsys)
    assert code == 2 and out == ""
    one_line(err, str(junk), *words)
    assert not (tmp_path / "fig").exists()


def test_mutual_knn_of_all_nan_features_is_not_a_perfect_score():
    from probe.metrics import mutual_knn

    x = torch.full((20, 8), float("nan"))
    with pytest.raises(ValueError, match="mutual_knn: a holds NaN or infinite values"):
        mutual_knn(x, x)


def test_proj_coeff_0_trains_the_vanilla_baseline_as_its_help_says(tmp_path, capsys):
    code, err, out = call(main_train, [*TINY, "--proj-coeff", "0", "--dry-run"], capsys)
    assert code == 0, err
    cfg = json.loads(out)
    assert cfg["proj_coeff"] == 0 and cfg["model"]["z_dims"] == [] and cfg["encoders"] == []
    code, err, _ = call(main_train, [*TINY, "--proj-coeff", "0", "--steps", "1", "--out", str(tmp_path / "v")], capsys)
    assert code == 0, err
    state = torch.load(tmp_path / "v" / "checkpoints" / "latest.pt", weights_only=True)
    assert state["step"] == 1 and not any(k.startswith("projectors.") for k in state["model"])
    # the same with --set, and --vanilla, give the same configuration
    for flag in (["--set", "proj_coeff=0"], ["--vanilla"]):
        code, err, out = call(main_train, [*TINY, *flag, "--dry-run"], capsys)
        assert code == 0 and json.loads(out) == cfg, (flag, err)


# ----------------------------------------------------------------------------------------------
# one field turns an objective on
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sets,expect,said", [
    # the tiny preset: 6 blocks of 2 heads against fashion-ssl (4 blocks of 4 heads, width 128)
    (["attn_coeff=0.5"], {"attn_model_layers": [1, 2], "attn_teacher_layers": [3, 4], "attn_heads": "mean"},
     "default attn_model_layers=[1, 2]"),
    (["sra_coeff=0.5"], {"model.sra_projector_dim": 128}, "default model.sra_projector_dim=128 (SRA: twice the width 64)"),
    (["reg_coeff=0.5"], {"model.reg_dim": 128}, "default model.reg_dim=128 (REG: the first encoder's width)"),
    (["sra_coeff=0.5", "model.sra_projector_dim=96"], {"model.sra_projector_dim": 96}, None),  # explicit fields win
    (["attn_coeff=0.5", "attn_model_layers=[3]", "attn_teacher_layers=[1]"], {"attn_model_layers": [3], "attn_teacher_layers": [1]}, None),
    (["reg_coeff=0.5", "model.reg_dim=128"], {"model.reg_dim": 128}, None),
])
def test_one_field_turns_an_objective_on(capsys, sets, expect, said):
    code, err, out = call(main_train, ["--preset", "tiny", "--dry-run", "--set", *sets], capsys)
    assert code == 0, err
    cfg = json.loads(out)
    for key, value in expect.items():
        section, _, leaf = key.rpartition(".")
        assert (cfg[section] if section else cfg)[leaf] == value, (key, cfg)
    defaults = [ln for ln in err.splitlines() if ln.startswith("default ")]
    assert (said is None and not defaults) or (said and any(ln.startswith(said) for ln in defaults)), err


def test_objective_defaults_follow_the_papers_and_the_model():
    from train.run.config import TrainConfig, preset
    from train.objectives.defaults import encoder_depth, haste_layers
    from train.targets.teacher import TEACHERS

    assert haste_layers(28, 12) == ((5, 6, 7, 8), (9, 10, 11, 12))  # HASTE's SiT-XL/2 <- DINOv2-B, exactly
    assert haste_layers(12, 12) == ((2, 3, 3, 3), (9, 10, 11, 12))
    assert all(encoder_depth(n) == c.depth for n, c in TEACHERS.items()) and encoder_depth("dinov2-vit-g-reg") == 40
    assert encoder_depth("fashion-ssl") == 4
    assert encoder_depth("sam2-hiera-l") is None
    xl = preset("SiT-XL/2")
    on = TrainConfig.from_dict({**xl.to_dict(), "attn_coeff": 0.5, "sra_coeff": 0.5})
    assert (on.attn_model_layers, on.attn_teacher_layers) == ((5, 6, 7, 8), (9, 10, 11, 12))
    assert on.model.sra_projector_dim == 2 * 1152 and on.check() == []
    # a saved config holds explicit values: loading it again chooses nothing and changes nothing
    again = TrainConfig.from_dict(json.loads(json.dumps(on.to_dict())))
    assert again == on and again.chosen == []


def test_a_run_switched_on_by_one_field_trains_and_resumes_with_the_same_command(tmp_path, capsys):
    args = [*TINY, "--set", "sra_coeff=0.5", "attn_coeff=0.5", "--out", str(tmp_path / "r")]
    assert call(main_train, [*args, "--steps", "1"], capsys)[0] == 0
    saved = json.loads((tmp_path / "r" / "config.json").read_text())["config"]
    assert saved["model"]["sra_projector_dim"] == 64 and saved["attn_model_layers"] == [1, 1]  # haste_layers(2, 4)
    assert saved["attn_teacher_layers"] == [3, 4] and saved["attn_heads"] == "mean"  # 2 model heads < fashion-ssl's 4
    code, err, _ = call(main_train, [*args, "--steps", "2"], capsys)  # resume: the same defaults, the same settings
    assert code == 0, err
    assert torch.load(tmp_path / "r" / "checkpoints" / "latest.pt", weights_only=True)["step"] == 2


def test_a_comma_separated_list_field_is_a_list_of_its_items(capsys):
    """``--set encoders=a,b`` aligns to both encoders (as the official code's ``--enc-type a,b``), not to one
    encoder named "a,b"; numbers are read as numbers; a wrong item is still refused by name."""
    from train.run.config import override, preset

    cfg = override(preset("tiny"), ["encoders=fashion-ssl,fashion-supervised", "align_layers=2, 4", "model.z_dims=128,128"], strict=True)
    assert list(cfg.encoders) == ["fashion-ssl", "fashion-supervised"]
    assert list(cfg.align_layers) == [2, 4] and list(cfg.model.z_dims) == [128, 128]
    assert list(override(preset("tiny"), ["encoders=fashion-ssl"], strict=True).encoders) == ["fashion-ssl"]
    with pytest.raises(ValueError, match="align_layers"):
        override(preset("tiny"), ["align_layers=2,x"], strict=True)
