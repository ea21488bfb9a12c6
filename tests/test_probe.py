"""probe: extraction (vs direct forwards, noise, store), linear probes, analyses, plots and the CLI.

Tiny SiT models (depth 3, width 32, 8 x 8 pixels through the identity codec) and a random-init
built-in teacher keep the whole file fast on two CPU cores.
"""

from pathlib import Path

import pandas as pd
import pytest
import torch

import probe.extract as ex
from probe import plots
from probe.analyses import load_table, training_progress
from probe.cli import main
from probe.extract import extract, image_noise, image_set, read_index
from probe.linear import fit_linear_probes, probe_accuracy
from probe.metrics import spatial_metrics
from probe.tokens import TokenPlan, encoder_tokens, token_pairs
from train.objectives import interpolants as itp
from train.data.datasets import build_dataset
from train.targets.encoders import load_encoder, resample_tokens
from train.errors import UserError
from train.models.loading import build, load
from conftest import save_ckpt

SIZE, DEPTH, TS = 8, 3, (0.0, 0.25, 0.5)
FAST = dict(n_images=24, n_train=40, ts=(0.0, 0.5), probe_epochs=5, probe_batch_size=16, batch_size=16,
            random_init_encoder=True, progress=False)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REPA_CACHE", str(tmp_path / "cache"))


def tiny(flavour="repa", seed=0):
    """A tiny model with every weight random (adaLN-zero would make all layers equal)."""
    torch.manual_seed(seed)
    m = build("SiT-T/2", flavour=flavour, learn_sigma=flavour != "repa", input_size=SIZE, in_channels=3,
              depth=DEPTH, hidden_size=32, num_heads=2, num_classes=10)
    for p in m.parameters():
        p.data.normal_(0, 0.1)
    return m.eval()


@pytest.fixture(scope="module")
def images():
    return build_dataset("shapes", "val", n=40, size=SIZE)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    for i, step in enumerate((10, 20)):
        save_ckpt(tiny(seed=i), root / "checkpoints" / f"step_{step:07d}.pt", step)
    return root


# ----------------------------------------------------------------------------------------------
# Extraction
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flavour", ["repa", "sit", "dit"])
def test_extract_equals_direct_forward(flavour, images):
    model = tiny(flavour)
    feats = extract(model, images, ts=TS, batch_size=16, progress=False)
    assert feats.values.shape == (DEPTH + 1, len(TS), len(images), 32) and feats.values.dtype == torch.float32
    x = images.images.float() / 127.5 - 1
    noise = torch.stack([torch.randn(3, SIZE, SIZE, generator=torch.Generator().manual_seed(i)) for i in range(len(images))])  # seed 0: image i -> i
    y = torch.full((len(images),), 10)
    for ti, t in enumerate(TS):
        x_t = (1 - t) * x + t * noise
        if flavour == "repa":
            t_in, scale = torch.full((len(x),), t), 1.0
        elif flavour == "sit":
            t_in, scale = torch.full((len(x),), 1 - t), 1.0
        else:
            step, scale = itp.to_ddpm(torch.tensor(t))
            t_in, scale = step.expand(len(x)), float(scale)
        with torch.no_grad():
            hidden = model(x_t * scale, t_in, y, return_hidden=range(DEPTH + 1), head=False, project=False).hidden
        for layer in range(DEPTH + 1):
            torch.testing.assert_close(feats.get(layer, t), hidden[layer].mean(1), rtol=1e-5, atol=1e-5)
    expected = {"repa": list(TS), "sit": [1 - t for t in TS], "dit": [int(itp.to_ddpm(torch.tensor(t))[0]) for t in TS]}
    assert feats.provenance["model_ts"] == pytest.approx(expected[flavour])
    assert feats.provenance["flavour"] == flavour and feats.provenance["label"] == "null"
    assert torch.equal(feats.labels, images.labels)


def test_same_image_same_noise_everywhere(images):
    """Noise depends on (seed, image index) only: not on batching, subsets, checkpoints, layers or t."""
    assert torch.equal(image_noise(torch.tensor([3, 7]), (3, 4, 4), 0)[1], image_noise(torch.tensor([7]), (3, 4, 4), 0)[0])
    assert not torch.equal(image_noise(torch.tensor([7]), (3, 4, 4), 0), image_noise(torch.tensor([7]), (3, 4, 4), 1))
    a = tiny(seed=0)
    full = extract(a, images, batch_size=7, progress=False)
    subset = image_set(images, n=10, seed=3)
    part = extract(a, subset, batch_size=4, progress=False)
    torch.testing.assert_close(part.values, full.values[:, :, subset.indices])
    # another checkpoint with the same patch embedding: layer 0 at t = 1 is a function of the noise only
    b = tiny(seed=1)
    b.x_embedder.load_state_dict(a.x_embedder.state_dict())
    b.pos_embed.data.copy_(a.pos_embed)
    fa, fb = (extract(m, images, ts=(1.0,), progress=False) for m in (a, b))
    torch.testing.assert_close(fa.get(0, 1.0), fb.get(0, 1.0))
    assert not torch.allclose(fa.get(DEPTH, 1.0), fb.get(DEPTH, 1.0))


def test_store_round_trip_and_resume(tmp_path, images, monkeypatch):
    model = load(save_ckpt(tiny(), tmp_path / "ckpt.pt", 5))
    store = tmp_path / "store"
    memory = extract(model, images, ts=TS, batch_size=8, progress=False)
    first = extract(model, images, ts=TS, batch_size=8, store=store, shard_size=16, progress=False)
    torch.testing.assert_close(first.values, memory.values)
    index = read_index(store)
    assert len(index) == 3 * len(TS)  # 40 images in chunks of 16 -> 3 shards per t
    assert set(index["step"]) == {5} and set(index["flavour"]) == {"repa"} and set(index["t"]) == set(TS)
    assert index["checkpoint"].str.endswith("ckpt.pt").all() and index["code_version"].str.len().min() > 0
    assert pd.read_parquet(store / "index.parquet").shape == index.shape
    assert not list(store.rglob("*.tmp"))

    calls, predict = [], ex.predict
    monkeypatch.setattr(ex, "predict", lambda *a, **k: calls.append(1) or predict(*a, **k))
    again = extract(model, images, ts=TS, batch_size=8, store=store, shard_size=16, progress=False)
    assert calls == [] and torch.equal(again.values, first.values)
    (store / index["file"][index["t"] == 0.25].iloc[-1]).unlink()  # the last chunk (8 images) at t = 0.25
    again = extract(model, images, ts=TS, batch_size=8, store=store, shard_size=16, progress=False)
    assert len(calls) == 1 and torch.equal(again.values, first.values)
    changed = extract(model, images, ts=TS, batch_size=8, store=store, shard_size=16, seed=1, progress=False)
    assert len(calls) > 1 and not torch.equal(changed.values, first.values)
    # a run retrained in place: same path and step, another file -> not served from the store
    retrained = load(save_ckpt(tiny(seed=1), tmp_path / "ckpt.pt", 5))
    fresh = extract(retrained, images, ts=TS, batch_size=8, store=store, shard_size=16, progress=False)
    assert not torch.equal(fresh.values, first.values)
    torch.testing.assert_close(fresh.values, extract(retrained, images, ts=TS, batch_size=8, progress=False).values)



def test_extract_rejects_bad_input(images):
    model = tiny()
    for kw in ({"ts": (1.5,)}, {"layers": [DEPTH + 1]}, {"pooling": "max"}, {"label": "random"}):
        with pytest.raises(UserError):
            extract(model, images, progress=False, **kw)
    with pytest.raises(UserError, match="latents"):
        extract(model, build_dataset("shapes", "val", n=4, size=16), progress=False)
    with pytest.raises(UserError, match="store"):
        extract(model, images, store="unused", progress=False)


def test_tokens_pooling_and_real_labels(images):
    model = tiny()
    tokens = extract(model, images, ts=(0.5,), pooling="tokens", progress=False)
    assert tokens.values.shape == (DEPTH + 1, 1, len(images), (SIZE // 2) ** 2, 32)
    mean = extract(model, images, ts=(0.5,), progress=False)
    torch.testing.assert_close(tokens.values.mean(-2), mean.values)
    real = extract(model, images, ts=(0.5,), label="real", progress=False)
    assert torch.equal(real.values[0], mean.values[0]) and not torch.allclose(real.values[DEPTH], mean.values[DEPTH])


def test_token_plan_keeps_sampled_tokens_and_spatial_metrics(tmp_path, images, monkeypatch):
    """A token plan in extract: the pooled features as before, plus exactly the planned tokens of the
    full token maps and each image's spatial metrics; stored in the shards and served on resume."""
    model = load(save_ckpt(tiny(), tmp_path / "ckpt.pt", 5))
    grid = SIZE // 2
    pairs = token_pairs(len(images), grid * grid, 50, seed=0)
    plan = TokenPlan(grid, pairs, ("lds", "cds", "rmsc"), 1, 2)
    full = extract(model, images, ts=(0.0, 0.5), pooling="tokens", progress=False)
    store = tmp_path / "store"
    kept = extract(model, images, ts=(0.0, 0.5), batch_size=7, store=store, shard_size=16, tokens=plan, progress=False)
    torch.testing.assert_close(kept.values, full.values.mean(-2))
    assert kept.tokens.shape == (DEPTH + 1, 2, 50, 32) and set(kept.spatial) == {"lds", "cds", "rmsc"}
    for li in range(DEPTH + 1):
        for ti in range(2):
            maps = full.values[li, ti]                                          # (N, T, D)
            torch.testing.assert_close(kept.tokens[li, ti], maps[pairs[:, 0], pairs[:, 1]])
            for name, value in spatial_metrics(maps, r_near=1, r_far=2).items():
                torch.testing.assert_close(kept.spatial[name][li, ti], value, rtol=1e-5, atol=1e-6)
    plain = extract(model, images, ts=(0.0, 0.5), store=store, shard_size=16, progress=False)
    assert plain.tokens is None and plain.spatial == {}
    index = read_index(store)
    assert index["file"].map(lambda f: Path(f).parent).nunique() == 2 and index["tokens"].notna().sum() == 2 * 3  # 2 t x 3 chunks
    calls, predict = [], ex.predict
    monkeypatch.setattr(ex, "predict", lambda *a, **k: calls.append(1) or predict(*a, **k))
    again = extract(model, images, ts=(0.0, 0.5), batch_size=5, store=store, shard_size=16, tokens=plan, progress=False)
    assert calls == [] and torch.equal(again.tokens, kept.tokens)
    assert all(torch.equal(again.spatial[m], kept.spatial[m]) for m in kept.spatial)


def test_token_pairs_and_encoder_tokens(tmp_path, images):
    pairs = token_pairs(10, 16, 30, seed=1)
    assert pairs.shape == (30, 2) and torch.equal(pairs, token_pairs(10, 16, 30, seed=1))
    assert not torch.equal(pairs, token_pairs(10, 16, 30, seed=2))
    flat = pairs[:, 0] * 16 + pairs[:, 1]
    assert torch.equal(flat, flat.unique()) and pairs[:, 0].max() < 10 and pairs[:, 1].max() < 16  # sorted, distinct
    assert len(token_pairs(2, 4, 100, seed=0)) == 8  # more than there are: all of them
    torch.manual_seed(0)
    enc = load_encoder("builtin-teacher", random_init=True)
    enc.provenance["init_seed"] = 0
    plan = TokenPlan(4, token_pairs(len(images), 16, 60, seed=0), ("lds", "rmsc"), 1, 3)
    got = encoder_tokens(enc, images, plan, batch_size=9, cache_dir=tmp_path, progress=False)
    with torch.no_grad():
        maps = resample_tokens(enc(images.images), 4)                         # native 8 x 8 -> the model's 4 x 4
    torch.testing.assert_close(got.tokens, maps[plan.pairs[:, 0], plan.pairs[:, 1]])
    for name, value in spatial_metrics(maps, ("lds", "rmsc"), r_near=1, r_far=3).items():
        torch.testing.assert_close(got.spatial[name], value, rtol=1e-5, atol=1e-6)
    assert len(list(tmp_path.glob("builtin-teacher-tokens-*.safetensors"))) == 1
    cached = encoder_tokens(enc, images, plan, cache_dir=tmp_path, progress=False)
    assert torch.equal(cached.tokens, got.tokens) and torch.equal(cached.spatial["lds"], got.spatial["lds"])


# ----------------------------------------------------------------------------------------------
# Linear probes
# ----------------------------------------------------------------------------------------------

def separable(p=3, n=300, d=16, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (n,), generator=g)
    x = torch.randn(p, c, d, generator=g)[:, y] * 4 + torch.randn(p, n, d, generator=g)
    return x, y


@pytest.mark.parametrize("method", ["torch", "sklearn"])
def test_linear_probe_rejects_a_single_training_class(method):
    x = torch.randn(1, 8, 4)
    with pytest.raises(UserError, match="single class"):
        probe_accuracy(x, torch.zeros(8, dtype=torch.long), x, torch.zeros(8, dtype=torch.long), method=method)


def test_linear_probe_separable_and_batched_equals_single():
    x, y = separable()
    tr, te = slice(0, 200), slice(200, None)
    acc = probe_accuracy(x[:, tr], y[tr], x[:, te], y[te], epochs=10, batch_size=64)
    assert acc.shape == (3,) and (acc >= 0.99).all()
    assert (probe_accuracy(x[:, tr], y[tr], x[:, te], y[te], method="sklearn") >= 0.99).all()
    stacked = fit_linear_probes(x[:, tr], y[tr], 4, epochs=5, batch_size=64, seed=3)
    for i in range(3):
        single = fit_linear_probes(x[i:i + 1, tr], y[tr], 4, epochs=5, batch_size=64, seed=3)
        torch.testing.assert_close(stacked.weight[i], single.weight[0])
        torch.testing.assert_close(stacked(x[:, te])[i], single(x[i:i + 1, te])[0])
    with pytest.raises(UserError):
        probe_accuracy(x[:, tr], y[tr], x[:, te], y[te], method="svm")


# ----------------------------------------------------------------------------------------------
# Analyses, plots, CLI
# ----------------------------------------------------------------------------------------------

def test_progress_on_toolkit_checkpoints(run_dir, tmp_path):
    out = tmp_path / "out"
    df = training_progress(run_dir, "shapes", encoders=["builtin-teacher"], out=out, store=str(tmp_path / "store"), **FAST)
    measured, refs = df[~df["is_reference"]], df[df["is_reference"]]
    assert set(measured["step"]) == {10, 20} and set(measured["run"]) == {run_dir.name}
    assert set(measured["layer"]) == set(range(DEPTH + 1)) and set(measured["t"]) == {0.0, 0.5}
    per_cell = measured.groupby(["step", "layer", "t"])["metric"].apply(sorted)
    assert all(m == ["cka", "cknna", "linear_probe", "mutual_knn"] for m in per_cell)
    assert len(refs) == 1 and refs.iloc[0]["layer"] == -1 and refs.iloc[0]["target"] == "builtin-teacher"
    assert df["value"].notna().all()
    # CKNNA's three HSIC terms use different k-NN masks (K's, L's and their product) and the unbiased
    # estimator, so unlike CKA its ratio is not bounded by 1 (1.0002 seen here at random weights)
    bounded = df["metric"] != "cknna"
    assert df.loc[bounded, "value"].between(-1, 1).all() and df.loc[~bounded, "value"].abs().max() < 1.01
    first = df.iloc[0]
    assert (first["preprocessing"], first["pooling"], first["label"], first["k"], first["n_images"]) == ("clip0.95+l2", "mean", "null", 10, 24)
    assert set(measured["flavour"]) == {"repa"} and set(measured["dataset"]) == {"shapes/val"}
    saved = load_table(out / "training_progress.parquet")
    pd.testing.assert_frame_equal(saved, df, check_dtype=False)
    assert len(pd.read_csv(out / "training_progress.csv")) == len(df)
    assert saved.attrs["probe"]["config"]["ts"] == [0.0, 0.5] and saved.attrs["probe"]["encoders"][0]["init_seed"] == 0


def test_token_level_metrics_in_the_table(run_dir):
    """Opt-in token-level rows beside the paper's: token CKNNA per layer x t x encoder, spatial metrics
    per layer x t, the encoder's spatial metrics as reference rows; the paper's rows unchanged."""
    from probe.analyses import layer_sweep

    ckpt = run_dir / "checkpoints" / "step_0000010.pt"
    opts = {**FAST, "n_train": 0, "layers": (1, 3)}
    base = layer_sweep(ckpt, "shapes", **{**opts, "metrics": ("cknna",)})
    df = layer_sweep(ckpt, "shapes", **{**opts, "metrics": ("cknna", "cknna_token", "lds", "cds", "rmsc"), "token_samples": 300})
    paper = df[df["metric"] == "cknna"].reset_index(drop=True)
    pd.testing.assert_frame_equal(paper, base, check_dtype=False)  # the reference rows make "step" float
    measured, refs = df[~df["is_reference"]], df[df["is_reference"]]
    per_cell = measured.groupby(["layer", "t"])["metric"].apply(sorted)
    assert all(m == ["cds", "cknna", "cknna_token", "lds", "rmsc"] for m in per_cell) and len(per_cell) == 4
    token = measured[measured["metric"] != "cknna"]
    assert (token["pooling"] == "tokens").all() and df["value"].notna().all()
    assert set(token.loc[token["metric"] == "cknna_token", "target"]) == {"builtin-teacher"}
    assert set(token.loc[token["metric"] != "cknna_token", "target"]) == {"none"}
    assert set(token.loc[token["metric"] != "cknna_token", "preprocessing"]) == {"l2"}
    assert sorted(refs["metric"]) == ["cds", "lds", "rmsc"] and set(refs["layer"]) == {-1}
    assert set(refs["target"]) == {"builtin-teacher"} and (refs["pooling"] == "tokens").all()
    # the spatial values are those of the full token maps
    model = load(ckpt)
    maps = extract(model, image_set(build_dataset("shapes", "val", size=SIZE), 24, 0), ts=(0.5,), layers=(3,), pooling="tokens",
                   progress=False).values[0, 0]
    want = spatial_metrics(maps)
    got = measured[(measured["layer"] == 3) & (measured["t"] == 0.5)].set_index("metric")["value"]
    for name in ("lds", "cds", "rmsc"):
        assert got[name] == pytest.approx(want[name].mean().item(), abs=1e-5)


def test_token_level_settings_fail_early(run_dir):
    from probe.analyses import ProbeConfig, compare, layer_sweep

    ckpt = run_dir / "checkpoints" / "step_0000010.pt"
    with pytest.raises(UserError, match="token_samples=10"):
        ProbeConfig(metrics=("cknna_token",), token_samples=10)
    with pytest.raises(UserError, match="r_near"):
        ProbeConfig(metrics=("lds",), r_near=2, r_far=2)
    with pytest.raises(UserError, match="r_near"):  # the 4 x 4 grid's largest distance is 6
        layer_sweep(ckpt, "shapes", **{**FAST, "n_train": 0, "metrics": ("lds",), "r_far": 7})
    coarse = build("SiT-T/4", flavour="repa", input_size=SIZE, in_channels=3, depth=DEPTH, hidden_size=32, num_heads=2, num_classes=10)
    with pytest.raises(UserError, match="at least 4 x 4"):
        layer_sweep(coarse, "shapes", **{**FAST, "n_train": 0, "metrics": ("cds",)})
    with pytest.raises(UserError, match="one token grid"):
        compare({"fine": tiny(), "coarse": coarse}, "shapes", **{**FAST, "n_train": 0, "metrics": ("rmsc",)})


def test_cli_accepts_token_level_metrics(tmp_path):
    from probe.cli import _config, build_parser

    (tmp_path / "x.pt").write_bytes(b"x")  # checkpoint paths must exist where they are parsed
    args = build_parser().parse_args(["sweep", "--checkpoint", str(tmp_path / "x.pt"), "--metrics", "cknna", "cknna_token", "lds", "cds", "rmsc",
                                      "--token-samples", "500", "--r-near", "2", "--r-far", "5"])
    cfg = _config(args)
    assert cfg.metrics == ("cknna", "cknna_token", "lds", "cds", "rmsc") and (cfg.token_samples, cfg.r_near, cfg.r_far) == (500, 2, 5)
    assert _config(build_parser().parse_args(["sweep", "--checkpoint", str(tmp_path / "x.pt")])).r_far is None


def synthetic_table():
    rows = [dict(run=run, step=step, layer=layer, t=t, metric=metric, target=target, is_reference=False,
                 value=0.1 * layer + 0.01 * step + (run == "REPA") * 0.2 - t / 5, dataset="shapes/val", n_images=24,
                 pooling="mean", label="null")
            for run in ("REPA", "vanilla") for step in (10, 20) for layer in range(4) for t in TS
            for metric, target in (("cknna", "builtin-teacher"), ("linear_probe", "labels"))]
    rows.append(dict(layer=-1, metric="linear_probe", target="builtin-teacher", value=0.9, is_reference=True))
    return pd.DataFrame(rows)


def test_plots_from_a_table(tmp_path, capsys):
    """``repa-probe plot`` on a saved CSV table: every kind of figure, PNG and PDF."""
    df = synthetic_table()
    df.to_csv(tmp_path / "table.csv", index=False)
    assert main(["plot", "--table", str(tmp_path / "table.csv"), "--out", str(tmp_path / "figs"), "--plot-layers", "1", "3"]) == 0
    paths = [Path(line) for line in capsys.readouterr().out.split()]
    names = {p.name for p in paths}
    for kind in ("layers", "heatmap", "progress", "compare"):
        assert {f"{kind}_cknna.png", f"{kind}_cknna.pdf", f"{kind}_linear_probe.png"} <= names
    assert all(p.stat().st_size > 1000 for p in paths)
    with pytest.raises(UserError):
        plots.layer_curves(df, tmp_path, "cka")


def test_plots_of_token_level_rows(tmp_path):
    """Spatial metrics (target "none", the encoder's value as a reference line) and token CKNNA draw
    like the paper's metrics, over training and side by side too."""
    df = synthetic_table()
    spatial = df[df["metric"] == "cknna"].assign(metric="lds", target="none", pooling="tokens")
    token = df[df["metric"] == "cknna"].assign(metric="cknna_token", pooling="tokens")
    ref = pd.DataFrame([dict(layer=-1, metric="lds", target="builtin-teacher", value=0.3, is_reference=True, pooling="tokens")])
    table = pd.concat([df, spatial, token, ref], ignore_index=True)
    names = {p.name for m in ("lds", "cknna_token") for p in plots.metric_figures(table, tmp_path, m, layers=(1,))}
    assert {f"{kind}_{m}.png" for kind in ("layers", "heatmap", "progress", "compare") for m in ("lds", "cknna_token")} <= names


def test_cli_sweep_end_to_end(run_dir, tmp_path, capsys):
    ckpt = run_dir / "checkpoints" / "step_0000010.pt"
    out = tmp_path / "cli"
    args = ["sweep", "--checkpoint", str(ckpt), "--random-init-encoder", "--n-images", "24", "--n-train", "40",
            "--t", "0", "0.5", "--layers", "1", "3", "--metrics", "cknna", "linear_probe", "--probe-epochs", "3",
            "--out", str(out), "--no-progress"]
    assert main(args) == 0
    df = pd.read_parquet(out / "layer_sweep.parquet")
    assert set(df.loc[~df["is_reference"], "layer"]) == {1, 3}
    assert (out / "layer_sweep.json").is_file() and (out / "figures" / "layers_cknna.pdf").is_file()
    assert (out / "figures" / "heatmap_linear_probe.png").is_file()


@pytest.mark.parametrize("bad, message", [
    (["--checkpoint", "missing.pt"], "does not exist"),
    (["--encoders", "no-such-encoder"], "unknown encoder"),
    (["--t", "0", "1.5"], "'1.5' is not a finite number in [0, 1]"),
    (["--t", "abc"], "argument --t: 'abc' is not a finite number"),
    (["--layers", "1", "9"], "must lie in 0..3"),
])
def test_cli_bad_input_one_line_exit_2(run_dir, tmp_path, capsys, bad, message):
    args = ["sweep", "--checkpoint", str(run_dir / "checkpoints" / "step_0000010.pt"), "--out", str(tmp_path), *bad]
    try:
        code = main(args)
    except SystemExit as e:  # argparse usage errors
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1 and err.startswith("error: ")


def test_sweep_and_progress_on_a_real_short_training_run(tmp_path):
    """Checkpoints written by the real training loop (2 + 2 steps, REPA and vanilla) go through the
    layer sweep, the progress analysis and the comparison."""
    import json as _json

    from train.run.cli import as_vanilla
    from train.run.config import DataConfig, ModelConfig, TrainConfig
    from train.targets.encoders import TeacherConfig
    from train.run.loop import train
    from probe.analyses import compare, layer_sweep, training_progress

    cfg = TrainConfig(
        model=ModelConfig(name="SiT-T/4", input_size=16, in_channels=3, num_classes=10, depth=2, hidden_size=32,
                          num_heads=2, encoder_depth=1, z_dims=(TeacherConfig().width,), projector_dim=32),
        data=DataConfig(dataset="shapes", image_size=16, n_train=32), encoders=("builtin-teacher",),
        random_init_encoders=True, batch_size=8, steps=2, ckpt_every=1, ckpt_series="all", log_every=1, device="cpu", threads=1)
    train(cfg, tmp_path / "pair" / "repa", progress=False)
    train(as_vanilla(cfg), tmp_path / "pair" / "vanilla", progress=False)
    opts = dict(n_images=24, n_train=24, probe_batch_size=24, probe_epochs=5, random_init_encoder=True, progress=False,
                ts=(0.0, 0.5), k=3)
    sweep = layer_sweep(tmp_path / "pair" / "repa" / "checkpoints" / "latest.pt", "shapes", out=tmp_path / "t", **opts)
    assert set(sweep[~sweep.is_reference]["layer"]) == {0, 1, 2} and set(sweep["t"].dropna()) >= {0.0, 0.5}
    prog = training_progress(tmp_path / "pair" / "vanilla", "shapes", **opts)
    assert sorted(prog[~prog.is_reference]["step"].unique()) == [0, 1, 2]
    both = compare(tmp_path / "pair", "shapes", **opts)
    assert set(both[~both.is_reference]["run"]) == {"repa", "vanilla"}
    assert _json.loads((tmp_path / "t" / "layer_sweep.json").read_text())["config"]["k"] == 3
    # projection alignment: the training objective's cosine, real vs null label, ema and model weights
    from probe.analyses import projection_alignment
    from probe.extract import image_noise, image_set
    from train.data.datasets import build_dataset
    from train.targets.encoders import load_encoder
    from train.objectives.interpolants import interpolate
    from train.models.loading import load, predict

    ckpt = tmp_path / "pair" / "repa" / "checkpoints" / "latest.pt"
    pa = projection_alignment(ckpt, "shapes", n_images=8, batch_size=3, ts=(0.0, 0.5), random_init_encoder=True,
                              progress=False, out=tmp_path / "pa")
    assert len(pa) == 10 and set(pa["metric"]) == {"projection_cosine"} and pa["value"].between(-1, 1).all()
    blind = pa[pa.weights == "baseline"].set_index("label")["value"]
    assert set(blind.index) == {"real", "null"}
    assert (tmp_path / "pa" / "projection_alignment.csv").is_file()
    model = load(ckpt, weights="ema")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        enc = load_encoder("builtin-teacher", grid=4, random_init=True)
    imgs = image_set(build_dataset("shapes", "val", size=16), 8, 0)
    idx, x, y = next(imgs.batches(8))
    from train.data.latents import build_codec
    latents = build_codec("identity").encode(x, sample=False)
    with torch.no_grad():
        z = predict(model, interpolate(latents, image_noise(idx, (3, 16, 16), 0), 0.5), 0.5, y, head=False, project=True).zs[0]
        target = enc(x)
    want = torch.nn.functional.cosine_similarity(z, target, dim=-1).mean().item()
    got = pa[(pa.weights == "ema") & (pa.label == "real") & (pa.t == 0.5)]["value"].item()
    assert got == pytest.approx(want, abs=1e-5)
    # image-blind baselines, brute force: mean token and class-mean token of 2,000 training images
    tr = image_set(build_dataset("shapes", "train", size=16), 2000, 0)
    with torch.no_grad():
        tt = torch.cat([enc(xb) for _, xb, _ in tr.batches(500)])
        te = torch.cat([enc(xb) for _, xb, _ in imgs.batches(500)])
    ytr, yte = tr.labels(), imgs.labels()
    mean_tok = sum(tt[i] for i in range(len(tt))) / len(tt)
    blind_null = torch.nn.functional.cosine_similarity(te, mean_tok.expand_as(te), dim=-1).mean().item()
    cls_tok = torch.stack([tt[ytr == int(c)].mean(0) for c in yte])
    blind_real = torch.nn.functional.cosine_similarity(te, cls_tok, dim=-1).mean().item()
    assert blind["null"] == pytest.approx(blind_null, abs=1e-5) and blind["real"] == pytest.approx(blind_real, abs=1e-5)
    with pytest.raises(UserError, match="no projector"):
        projection_alignment(tmp_path / "pair" / "vanilla" / "checkpoints" / "latest.pt", "shapes", n_images=8,
                             random_init_encoder=True, progress=False)


def test_too_few_probe_steps_warn(run_dir):
    from probe.analyses import layer_sweep

    ckpt = run_dir / "checkpoints" / "step_0000010.pt"
    with pytest.warns(UserWarning, match="only 5 optimiser steps"):  # 5 epochs x 1 batch of 40
        layer_sweep(ckpt, "shapes", **{**FAST, "metrics": ("linear_probe",), "probe_batch_size": 64})
