"""Seed-aggregated summaries (probe.summary): the tables behind RESULTS.md."""

import math

import numpy as np
import pandas as pd
import pytest

from probe.summary import (final_rows, mean_sd, peak_layers, progress_rows, repa_gain, results_markdown, speedup,
                           steps_to_reach)


def _probe_table(seeds=(0, 1, 2), steps=(0, 100, 200), depth=4, ts=(0.0, 0.5)):
    """Synthetic rows shaped like probe.analyses output: value = known function of the cell."""
    rows = []
    for seed in seeds:
        rows.append({"run": None, "step": np.nan, "layer": -1, "t": np.nan, "metric": "linear_probe",
                     "target": "teacher", "value": 0.9 + 0.01 * seed, "is_reference": True, "seed_run": seed})
        for run in ("vanilla", "repa"):
            for step in steps:
                for layer in range(0, depth + 1):
                    for t in ts:
                        for metric in ("cknna", "linear_probe"):
                            # vanilla peaks at layer 3; REPA adds 0.1 at layer 2; grows with step; seed jitter
                            v = 0.01 * step / 100 - 0.01 * abs(layer - 3) + 0.001 * seed - 0.01 * t
                            v += 0.1 * (run == "repa" and layer == 2) * (step > 0)
                            rows.append({"run": run, "step": float(step), "layer": layer, "t": t, "metric": metric,
                                         "target": "x", "value": v, "is_reference": False, "seed_run": seed})
    return pd.DataFrame(rows)


def _metrics_table(seeds=(0, 1, 2)):
    rows = []
    for seed in seeds:
        for step in (100, 200, 300, 400):
            rows.append({"run": "vanilla", "seed": seed, "step": step, "fd": 1000.0 / step, "class_acc": 0.1})
            rows.append({"run": "repa", "seed": seed, "step": step, "fd": 1000.0 / (2 * step), "class_acc": 0.2})
            rows.append({"run": "repa", "seed": seed, "step": step - 5, "fd": np.nan, "class_acc": np.nan,
                         "denoise_loss": 0.3})
    return pd.DataFrame(rows)


def test_steps_to_reach_matches_dense_log_interpolation():
    steps, fds = [100, 200, 400], [500.0, 100.0, 20.0]
    dense = np.linspace(100, 400, 300001)
    curve = np.exp(np.interp(dense, steps, np.log(fds)))
    for target in (300.0, 100.0, 50.0, 21.0):
        got, bound = steps_to_reach(steps, fds, target)
        assert bound == "="
        assert got == pytest.approx(dense[np.argmax(curve <= target + 1e-9)], abs=2e-3)
    assert steps_to_reach(steps, fds, 600.0) == (100.0, "<=")
    assert steps_to_reach(steps, fds, 10.0) == (400.0, ">")


def test_speedup_pairs_runs_by_seed():
    sp = speedup(_metrics_table())
    assert len(sp) == 12 and set(sp["seed"]) == {0, 1, 2}
    # REPA's FD at step s is vanilla's at 2s: ratio 2 where vanilla gets there within its 400 steps
    inside = sp[sp["repa_step"] <= 200]
    assert np.allclose(inside["ratio"], 2.0) and (inside["bound"] == "=").all()
    beyond = sp[sp["repa_step"] > 200]
    assert (beyond["bound"] == ">").all() and np.allclose(beyond["vanilla_step"], 400)


def test_peaks_gains_and_progress():
    p = _probe_table()
    f = final_rows(p, "cknna")
    assert set(f["step"]) == {200} and set(f["layer"]) == {1, 2, 3, 4}  # layer 0 (embedding) left out
    peaks = peak_layers(p, "cknna")
    assert set(peaks[peaks["run"] == "vanilla"]["layer"]) == {3} and peaks[peaks["run"] == "vanilla"]["interior"].all()
    g = repa_gain(p, "linear_probe")
    assert np.allclose(g[g["layer"] == 2]["gain"], 0.1) and np.allclose(g[g["layer"] != 2]["gain"], 0.0)
    pr = progress_rows(p, "cknna")
    van = pr[(pr["run"] == "vanilla") & (pr["seed_run"] == 0) & (pr["t"] == 0)].sort_values("step")
    assert np.allclose(van["value"], [0.0, 0.01, 0.02])


def test_mean_sd_and_markdown():
    assert mean_sd([1.0, 2.0, 3.0]) == "2.000 ± 1.000"
    assert mean_sd([0.5]) == "0.500"
    md = results_markdown(_probe_table(), _metrics_table(), {"linear_probe_accuracy": 0.95, "val_accuracy": 0.94}, 2)
    assert "Seeds: 0, 1, 2" in md
    assert "| cknna | 0 | vanilla |" in md and "3, 3, 3 | 3/3 |" in md
    assert "| linear_probe | 0 | 0.000 ± 0.000 | 0.100 ± 0.000 |" in md
    # max over layers at t = 0: vanilla's layer 3, REPA's boosted layer 2 (both metrics share the formula)
    assert "| 200 | 0.021 ± 0.001 | 0.111 ± 0.001 | 0.021 ± 0.001 | 0.111 ± 0.001 |" in md
    assert "| 100 | 5.0 ± 0.0 | 200, 200, 200 | 2.00, 2.00, 2.00 |" in md
    assert "> 400" in md
    assert not math.isnan(float(md.split("Teacher's own linear probe on the probe images (mean-pooled tokens): ")[1][:5]))


def test_markdown_ignores_token_level_rows():
    """Token-level and spatial rows (and the encoder's spatial reference rows) leave the summary as it was."""
    p = _probe_table()
    extra = p[~p["is_reference"] & (p["metric"] == "cknna")].assign(metric="lds", target="none", pooling="tokens")
    refs = p[p["is_reference"]].assign(metric="rmsc", value=0.5)
    more = pd.concat([p, extra, extra.assign(metric="cknna_token", target="x"), refs], ignore_index=True)
    teacher = {"linear_probe_accuracy": 0.95, "val_accuracy": 0.94}
    assert results_markdown(more, _metrics_table(), teacher, 2) == results_markdown(p, _metrics_table(), teacher, 2)


def test_same_tables_ignores_provenance_and_catches_a_changed_value(tmp_path):
    from studies.same_tables import main

    a, b = tmp_path / "a", tmp_path / "b"
    for d, version, value in ((a, "rev1", 0.5), (b, "rev2", 0.5)):
        d.mkdir()
        pd.DataFrame({"metric": ["cknna"], "value": [value], "code_version": [version]}).to_csv(d / "probe.csv", index=False)
        (d / "results.md").write_text("# same\n")
    assert main([str(a), str(b)]) == 0
    pd.DataFrame({"metric": ["cknna"], "value": [0.5000001], "code_version": ["rev2"]}).to_csv(b / "probe.csv", index=False)
    assert main([str(a), str(b)]) == 1
