"""Seed-aggregated summaries (probe.summary): the tables behind RESULTS.md."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

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
    assert "evaluator confidence" not in md
    conf = _metrics_table().assign(class_confidence=lambda d: d["fd"].notna() * (0.5 + 0.2 * (d["run"] == "repa")))
    md = results_markdown(_probe_table(), conf, {"linear_probe_accuracy": 0.95, "val_accuracy": 0.94}, 2)
    assert "| evaluator confidence vanilla | evaluator confidence repa |" in md
    assert "| 400 | 2.5 ± 0.0 | 1.2 ± 0.0 | 0.100 ± 0.000 | 0.200 ± 0.000 | 0.500 ± 0.000 | 0.700 ± 0.000 |" in md


def test_markdown_lists_the_aligned_layer_against_every_teacher_and_their_cards():
    def card(name, kind):
        return {"name": name, "config": {"kind": kind}, "compute": {"ratio_to_demo_student": 20.5},
                "measures": {"linear_probe_accuracy": 0.8, "knn_accuracy": 0.7, "lds": 0.05, "class_r2": 0.5}}

    rows = [{"run": run, "seed_run": seed, "target": target, "value": v, "is_reference": False}
            for target, vals in {"ssl": {"repa": (0.5, 0.6), "vanilla": (0.4, 0.4)}, "sup": {"repa": (0.3, 0.3), "vanilla": (0.15, 0.2)}}.items()
            for run, per_seed in vals.items() for seed, v in enumerate(per_seed)]
    rows.append({**rows[0], "is_reference": True, "value": 9.0})
    md = results_markdown(_probe_table(), _metrics_table(), card("ssl", "ssl"), 2, teachers=pd.DataFrame(rows),
                          more_teachers=[card("sup", "supervised")])
    assert "### The aligned layer 2 against every teacher" in md
    assert "| ssl | 0.550 ± 0.071 | 0.400 ± 0.000 | 1.25, 1.50 |" in md  # per seed: 0.5 / 0.4, 0.6 / 0.4
    assert "| sup | 0.300 ± 0.000 | 0.175 ± 0.035 | 2.00, 1.50 |" in md
    assert "Shipped teacher ssl (ssl)" in md and "Shipped teacher sup (supervised)" in md
    assert "against every teacher" not in results_markdown(_probe_table(), _metrics_table(), card("ssl", "ssl"), 2)


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


def test_fashion_choose_applies_the_preregistered_rule(tmp_path, capsys):
    """Variant ``fast`` reaches vanilla's step-2000 FD at step 1,000 on every seed (speed-up 2), ``slow``
    at 1,500 on two seeds but not on the third (score 1.0, and its proviso fails there): ``fast`` wins."""
    import json

    from studies.fashion_choose import choose, main
    from studies.summarize import read_evals

    curves = {"vanilla": [30, 16, 12, 10], "fast": [20, 10, 8, 6], "slow": [29, 15, 10, 9]}
    for variant, fds in curves.items():
        for seed in (0, 1, 2):
            d = tmp_path / "cond" / variant / f"seed{seed}"
            d.mkdir(parents=True)
            bad = variant == "slow" and seed == 2
            lines = [{"step": s, "fd": fd + (5 if bad else 0), "fd_half_a": fd + 0.1, "fd_half_b": fd - 0.1, "class_acc": 0.5}
                     for s, fd in zip((500, 1000, 1500, 2000), fds)]
            (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    seeds, best = choose(read_evals(tmp_path), ["cond/slow", "cond/fast"])
    assert best == "cond/fast"
    fast = seeds[seeds.variant == "cond/fast"]
    assert list(fast.t_star) == [1000.0] * 3 and list(fast.speed_up) == [2.0] * 3
    slow = seeds[seeds.variant == "cond/slow"].set_index("seed")
    assert slow.loc[0, "t_star"] == 1500.0 and not slow.loc[2, "reached"] and slow.loc[2, "speed_up"] == 1.0
    assert main([str(tmp_path), "--order", "cond/slow", "cond/fast"]) == 0
    assert "chosen by the rule: cond/fast" in capsys.readouterr().out


def test_fashion_choose_reports_held_out_seeds_without_choosing_on_them(tmp_path, capsys):
    """Seeds 0-2 choose ``fast``; on held-out seed 3 it falls behind vanilla at step 1,500, on seed 4 it
    stays ahead: both are reported, the choice is the same as without them, and the rule's own seeds'
    table does not include them."""
    import json

    from studies.fashion_choose import choose, held_out, main
    from studies.summarize import read_evals

    curves = {"vanilla": [30, 16, 12, 10], "fast": [20, 10, 8, 6]}
    for variant, fds in curves.items():
        for seed in (0, 1, 2, 3, 4):
            d = tmp_path / "uncond" / variant / f"seed{seed}"
            d.mkdir(parents=True)
            fds_s = [20, 10, 13, 6] if (variant, seed) == ("fast", 3) else fds
            lines = [{"step": s, "fd": fd, "fd_half_a": fd + 0.1, "fd_half_b": fd - 0.1}
                     for s, fd in zip((500, 1000, 1500, 2000), fds_s)]
            (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    evals = read_evals(tmp_path)
    seeds, best = choose(evals, ["uncond/fast"])
    assert best == "uncond/fast" and sorted(seeds.seed) == [0, 1, 2]
    rows = held_out(evals, ["uncond/fast"], [3, 4]).set_index("seed")
    assert not rows.loc[3, "below_from_1000"] and rows.loc[4, "below_from_1000"]
    assert rows.loc[3, "gaps"] == "6.00 / -1.00 / 4.00"
    assert main([str(tmp_path), "--order", "uncond/fast", "--held-out", "3", "4", "--out", str(tmp_path / "c.csv")]) == 0
    out = capsys.readouterr().out
    assert "chosen by the rule: uncond/fast" in out and "on seeds [4] of [3, 4]" in out
    assert sorted(pd.read_csv(tmp_path / "c_held_out.csv").seed) == [3, 4]
    # a folder of the held-out seeds alone (stage 12 ran on another machine than the rule's seeds):
    # reported without the rule's table; with neither, exit status 1
    for seed in (0, 1, 2):
        for variant in curves:
            (tmp_path / "uncond" / variant / f"seed{seed}" / "metrics.jsonl").unlink()
    assert main([str(tmp_path), "--order", "uncond/fast", "--held-out", "3", "4"]) == 0
    out = capsys.readouterr().out
    assert "chosen by the rule" not in out and "on seeds [4] of [3, 4]" in out
    assert main([str(tmp_path), "--order", "uncond/fast"]) == 1


def test_summarize_keeps_the_rows_of_runs_no_longer_on_this_machine(tmp_path, capsys):
    """Stage 1's runs are gone, stage 2's are here: the tables hold both, and a run found again replaces
    its own rows rather than doubling them; the rule then reads the committed table."""
    import json

    from studies.fashion_choose import main as choose_main
    from studies.summarize import main

    def write(root, variant, seed, fds):
        d = root / variant / f"seed{seed}"
        d.mkdir(parents=True)
        lines = [{"step": s, "fd": fd, "fd_half_a": fd, "fd_half_b": fd} for s, fd in zip((500, 1000, 1500, 2000), fds)]
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))

    first, second, out = tmp_path / "first", tmp_path / "second", tmp_path / "tables"
    for seed in (0, 1, 2):
        write(first, "cond/vanilla", seed, [30, 16, 12, 10])
        write(first, "cond/repa", seed, [31, 17, 13, 11])
    main([str(first), "--out", str(out)])
    write(second, "cond/repa", 0, [20, 10, 8, 6])  # seed 0 of cond/repa measured again
    for seed in (0, 1, 2):
        write(second, "uncond/vanilla", seed, [30, 16, 12, 10])
        write(second, "uncond/repa", seed, [20, 10, 8, 6])
    main([str(second), "--out", str(out)])
    evals = pd.read_csv(out / "evals.csv")
    assert len(evals) == 4 * 3 * 4  # 4 variants x 3 seeds x 4 evaluations, none twice
    assert evals[(evals.variant == "cond/repa") & (evals.seed == 0)].fd.tolist() == [20, 10, 8, 6]
    assert evals[(evals.variant == "cond/repa") & (evals.seed == 1)].fd.tolist() == [31, 17, 13, 11]
    assert len(pd.read_csv(out / "training_metrics.csv")) == 48
    assert set(pd.read_csv(out / "summary.csv").variant) == {"cond/vanilla", "cond/repa", "uncond/vanilla", "uncond/repa"}
    assert choose_main([str(out / "evals.csv"), "--order", "cond/repa", "uncond/repa"]) == 0
    assert "chosen by the rule: uncond/repa" in capsys.readouterr().out


def _must_show_tables(gap: float):
    steps = [500, 1000, 1500, 2000]
    fds = {"repa": [20.0, 10.0, 8.0, 6.0], "vanilla": [22.0, 13.0, 10.0, 8.0], "control": [22.5, 13.2, 10.1, 8.1]}
    rows = []
    for run, fd in fds.items():
        for s, f in zip(steps, fd):
            rows.append({"run": run, "seed": 0, "step": s, "fd": f, "fd_half_a": f + gap / 2, "fd_half_b": f - gap / 2,
                         "kid": f / 10, "kid_half_a": f / 10, "kid_half_b": f / 10, "class_acc": 0.8 if run == "repa" else 0.7})
    probe = []
    for run, vals in {"repa": (0.1, 0.4), "vanilla": (0.05, 0.2)}.items():
        for step, v in zip((0, 2000), vals):
            for layer in (1, 2):
                probe.append({"seed_run": 0, "metric": "cknna", "t": 0.0, "pooling": "mean", "label": "null", "run": run,
                              "step": step, "layer": layer, "value": v * layer / 2})
    return pd.DataFrame(rows), pd.DataFrame(probe)


def test_must_show_checks_against_the_half_to_half_noise():
    from studies.must_show import seed_checks, spread

    ev, probe = _must_show_tables(gap=1.0)
    row = seed_checks(ev, probe, 0, align=2)
    assert row["fd ahead at every eval >= 1000"] is True  # margins 3, 2, 2 against noise 1
    assert row["fd smallest margin / its noise"] == "2 / 1"
    # REPA reaches vanilla's final FD 8 at step 1500 (between 1500 and 2000: exactly at 1500)
    assert row["REPA steps to it / vanilla's (<= 2/3)"] == 0.75
    assert row["CKNNA block 2 REPA / vanilla (>= 1.5)"] == "0.4000 / 0.2000 = 2.00"
    assert row["vanilla CKNNA max, first -> last ckpt"] == "0.0500 -> 0.2000"
    assert row["control FD gain over vanilla (noise)"] == "-0.10 (1.00)"
    assert row["REPA class acc (>= 0.75)"] == 0.8
    noisy = seed_checks(*_must_show_tables(gap=2.5), 0, align=2)  # a margin of 2 is inside a noise of 2.5
    assert noisy["fd ahead at every eval >= 1000"] is False
    assert set(spread(ev).index) == {"repa", "vanilla", "control"}


def test_must_show_with_two_teachers_is_met_only_against_both():
    from studies.must_show import seed_checks

    ev, _ = _must_show_tables(gap=1.0)
    rows = [{"seed_run": 0, "metric": "cknna", "t": 0.0, "pooling": "mean", "label": "null", "layer": 2, "run": run,
             "target": target, "value": v}
            for target, vals in {"ssl": (0.5, 0.4), "sup": (0.3, 0.15)}.items() for run, v in zip(("repa", "vanilla"), vals)]
    teachers = pd.DataFrame(rows + [{**rows[0], "layer": 1, "value": 9.0}, {**rows[0], "seed_run": 1, "value": 9.0}])
    row = seed_checks(ev, _must_show_tables(gap=1.0)[1], 0, align=2, teachers=teachers)
    assert row["CKNNA block 2 vs ssl REPA / vanilla"] == "0.5000 / 0.4000 = 1.25"
    assert row["CKNNA block 2 vs sup REPA / vanilla"] == "0.3000 / 0.1500 = 2.00"
    assert row["CKNNA >= 1.5x against every teacher (2)"] is False  # 2.00 against one, 1.25 against the other
    teachers.loc[(teachers.target == "ssl") & (teachers.run == "vanilla"), "value"] = 0.25
    assert seed_checks(ev, _must_show_tables(gap=1.0)[1], 0, align=2, teachers=teachers)[
        "CKNNA >= 1.5x against every teacher (2)"] is True


def test_fill_evals_finds_the_evaluation_steps_a_log_lacks_and_inserts_them_in_order(tmp_path):
    import json
    from types import SimpleNamespace

    from studies.fill_evals import insert, missing_steps

    (tmp_path / "checkpoints").mkdir()
    for s in (0, 500, 1000, 1500, 2000):
        (tmp_path / "checkpoints" / f"step_{s:07d}.pt").touch()
    lines = [{"step": s, "loss": 1.0} for s in (500, 1000, 1500, 2000)] + [{"step": 500, "fd": 3.0}]
    lines.insert(4, {"step": 1500, "fd": 2.0})  # the log order: a step's loss, then its evaluation
    lines.sort(key=lambda r: r["step"])
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert missing_steps(tmp_path, SimpleNamespace(eval_every=500, steps=2000)) == [1000, 2000]
    insert(tmp_path, {"step": 1000, "fd": 2.5, "filled": True})
    steps = [(r["step"], "fd" in r) for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())]
    assert steps == [(500, False), (500, True), (1000, False), (1000, True), (1500, False), (1500, True), (2000, False)]
    assert missing_steps(tmp_path, SimpleNamespace(eval_every=500, steps=2000)) == [2000]


def test_a_linked_arm_shares_checkpoints_but_not_the_files_a_resume_rewrites(tmp_path):
    from studies.link_arms import link_run

    src = tmp_path / "study" / "seed0"
    (src / "checkpoints").mkdir(parents=True)
    (src / "checkpoints" / "step_0002000.pt").write_bytes(b"weights")
    (src / "metrics.jsonl").write_text('{"step": 0}\n')
    (src / "config.json").write_text("{}")
    dst = tmp_path / "extended" / "seed0" / "repa"
    link_run(src, dst)
    assert (dst / "checkpoints" / "step_0002000.pt").stat().st_ino == (src / "checkpoints" / "step_0002000.pt").stat().st_ino
    with open(dst / "metrics.jsonl", "a") as f:  # the loop appends to its log and truncates it in place
        f.write('{"step": 2000, "align/seconds": 1.0}\n')
    assert (src / "metrics.jsonl").read_text() == '{"step": 0}\n'
    with pytest.raises(SystemExit, match="exists"):
        link_run(src, dst)


def test_fashion_choose_judges_a_longer_run_at_its_own_length(tmp_path):
    """Stage 8's runs are 4,000 steps: the speed-up is 4,000 / t* against vanilla's step-4,000 FD, and the
    proviso covers every evaluation from 1,000 to 4,000 (a lead lost at step 3,000 fails it); a run not
    yet at its planned length is not judged."""
    import json

    from studies.fashion_choose import choose
    from studies.summarize import read_evals

    steps = [500, 1000, 1500, 2000, 2500, 3000, 3500, 4000]
    curves = {"vanilla": [30, 16, 12, 10, 9, 8, 7, 6], "repa": [20, 10, 8, 7, 6, 5.5, 5.2, 5],
              "late": [20, 10, 8, 7, 6, 8.5, 6.5, 5.9]}
    for variant, fds in curves.items():
        for seed in (0, 1, 2):
            d = tmp_path / "u-4k" / variant / f"seed{seed}"
            d.mkdir(parents=True)
            (d / "config.json").write_text(json.dumps({"config": {"steps": 4000}}))
            lines = [{"step": s, "fd": fd, "fd_half_a": fd, "fd_half_b": fd} for s, fd in zip(steps, fds)]
            (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    seeds, best = choose(read_evals(tmp_path), ["u-4k/late", "u-4k/repa"])
    repa = seeds[seeds.variant == "u-4k/repa"]
    assert list(repa.steps) == [4000] * 3
    assert list(repa.t_star) == [2500.0] * 3 and repa.speed_up.round(6).tolist() == [1.6] * 3  # FD 6 reached at 2,500
    late = seeds[seeds.variant == "u-4k/late"]
    assert list(late.t_star) == [2500.0] * 3 and not late.below_from_1000.any()  # behind at step 3,000
    assert best == "u-4k/repa"
    # a vanilla stopped at step 3,000 of its 4,000: that seed is not judged
    (tmp_path / "u-4k" / "vanilla" / "seed2" / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "fd": fd, "fd_half_a": fd, "fd_half_b": fd}) + "\n"
                for s, fd in zip(steps[:6], curves["vanilla"])))
    seeds, best = choose(read_evals(tmp_path), ["u-4k/late", "u-4k/repa"])
    assert sorted(seeds[seeds.variant == "u-4k/repa"].seed) == [0, 1] and best is None


def _sizes_folder(folder, ratios: dict, cknna: list[tuple]):
    """A study result folder: ``summary.csv`` with ``ratios`` {(variant, seed): steps ratio} and one
    ``cknna_*.csv`` with rows (variant, seed, target, layer, value, label)."""
    folder.mkdir()
    pd.DataFrame([{"variant": v, "seed": s, "ratio": r} for (v, s), r in ratios.items()]).to_csv(folder / "summary.csv", index=False)
    rows = [{"run": f"{v}-s{s}", "checkpoint": f"/x/runs/study/{folder.name}/{v}/seed{s}/checkpoints/step_0002000.pt",
             "step": 2000, "layer": layer, "t": 0.0, "metric": "cknna", "target": target, "value": value,
             "pooling": "mean", "label": label} for v, s, target, layer, value, label in cknna]
    if rows:
        pd.DataFrame(rows).to_csv(folder / "cknna_block2.csv", index=False)
    return folder


def test_sizes_needs_both_sizes_against_every_teacher_at_the_aligned_block(tmp_path, capsys):
    from studies.sizes import main, sizes

    ratios = {("uncond/vanilla", 0): 1.0, ("uncond/a", 0): 0.60, ("uncond/a", 1): 0.70, ("uncond/b", 0): 0.50,
              ("uncond/c", 0): float("nan")}
    ck = [("uncond/vanilla", 0, "ssl", 2, 0.20, "null"), ("uncond/vanilla", 0, "sup", 2, 0.10, "null"),
          ("uncond/vanilla", 1, "ssl", 2, 0.20, "null"), ("uncond/vanilla", 0, "ssl", 1, 0.10, ""),
          ("uncond/a", 0, "ssl", 2, 0.40, "null"), ("uncond/a", 0, "sup", 2, 0.16, "null"),   # 2.0x and 1.6x
          ("uncond/a", 1, "ssl", 2, 0.40, "null"),
          ("uncond/a", 0, "ssl", 2, 0.90, "real"),                                            # real label: ignored
          ("uncond/b", 0, "ssl", 1, 0.16, ""), ("uncond/b", 0, "ssl", 2, 0.60, "")]           # aligned at block 1: 1.6x
    folder = _sizes_folder(tmp_path / "study", ratios, ck)
    t = sizes([folder], [0, 1]).set_index(["variant", "seed"])
    assert "uncond/vanilla" not in t.index.get_level_values(0)
    assert t.loc[("uncond/a", 0), "cknna_ratio_min"] == pytest.approx(1.6) and t.loc[("uncond/a", 0), "both_met"]
    assert not t.loc[("uncond/a", 1), "speed_met"] and t.loc[("uncond/a", 1), "cknna_met"]       # 0.70 > 2/3
    assert t.loc[("uncond/b", 0), "block"] == 1 and t.loc[("uncond/b", 0), "cknna_ratio_min"] == pytest.approx(1.6)
    assert t.loc[("uncond/c", 0), "steps_ratio"] == 1.0 and not t.loc[("uncond/c", 0), "cknna_met"]  # never reached, unmeasured
    assert main([str(folder), "--seeds", "0", "1"]) == 0
    out = capsys.readouterr().out
    assert "0.60 / 0.70" in out and "1.60 / 2.00" in out


def test_sizes_lists_runs_linked_into_several_folders_once_where_measured(tmp_path):
    from studies.sizes import by_variant, sizes

    ratios = {("uncond/vanilla", 0): 1.0, ("uncond/a", 0): 0.60}
    plain = _sizes_folder(tmp_path / "first", ratios, [])
    measured = _sizes_folder(tmp_path / "second", ratios, [("uncond/vanilla", 0, "ssl", 2, 0.2, "null"),
                                                           ("uncond/a", 0, "ssl", 2, 0.4, "null")])
    other = _sizes_folder(tmp_path / "third", {("uncond/a", 0): 0.65}, [])   # other runs of that variant: kept
    b = by_variant(sizes([plain, measured, other], [0]))
    assert b.folder.tolist() == ["second", "third"] and b.cknna_ratio_min.tolist() == ["2.00", "-"]


def test_reg_floor_is_the_residual_of_the_best_linear_predictor():
    """studies.reg_floor against brute force: sampled Gaussian tokens, the least-squares affine regression of the
    velocity eps - c on c_t = (1 - t) c + t eps, residual per channel, averaged over the same times."""
    from studies.reg_floor import prior_floor

    gen = torch.Generator().manual_seed(0)
    d, n, n_t = 4, 200_000, 8
    a = torch.randn(d, d, generator=gen, dtype=torch.float64)
    cov = a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)
    c = torch.randn(n, d, generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(cov).T + 0.3
    eps = torch.randn(n, d, generator=gen, dtype=torch.float64)
    brute = 0.0
    for t in (torch.arange(n_t, dtype=torch.float64) + 0.5) / n_t:
        x = torch.cat([(1 - t) * c + t * eps, torch.ones(n, 1, dtype=torch.float64)], dim=1)
        v = eps - c
        resid = v - x @ torch.linalg.lstsq(x, v).solution
        brute += resid.pow(2).mean().item() / n_t
    assert prior_floor(cov, n_t) == pytest.approx(brute, rel=0.01)
    assert prior_floor(cov.diag().diag(), n_t) > prior_floor(cov, n_t)  # knowing less: a higher floor


def _horizon_evals(curves: dict) -> pd.DataFrame:
    """evals.csv rows: ``curves[(variant, seed)] = [(step, fd, fd_half_gap, kid), ...]`` (halves fd +- gap / 2)."""
    return pd.DataFrame([{"variant": v, "seed": s, "step": step, "fd": fd, "fd_half_a": fd + gap / 2, "fd_half_b": fd - gap / 2,
                          "kid": kid, "kid_half_a": kid + 0.0005, "kid_half_b": kid - 0.0005}
                         for (v, s), curve in curves.items() for step, fd, gap, kid in curve])


def test_horizon_reads_the_speed_at_every_horizon_the_lead_and_the_flatness(tmp_path, capsys):
    from studies.horizon import horizon_rows, main

    van = [(1000, 30, 0.2, 0.30), (2000, 20, 0.2, 0.20), (3000, 15, 0.2, 0.15), (4000, 12, 0.2, 0.12)]
    curves = {("u/vanilla", 0): van,
              ("u/repa", 0): [(1000, 25, 0.2, 0.25), (2000, 16, 0.2, 0.15), (3000, 13, 0.2, 0.10), (4000, 11, 1.5, 0.07)],
              ("u/slow", 0): [(s, fd + 1, 0.2, k) for s, fd, _, k in van],      # never reaches vanilla's FD
              ("u/flat", 0): [(1000, 25, 0.2, 0.25), (2000, 16, 0.2, 0.15), (3000, 11.4, 0.2, 0.10), (4000, 11, 1.5, 0.07)],
              ("u/late", 0): [(1000, 31, 0.2, 0.3), (2000, 21, 0.2, 0.2), (3000, 14, 0.2, 0.1), (4000, 11, 0.2, 0.1)],
              ("u/alone", 1): van}                                             # no vanilla of seed 1: left out
    t = horizon_rows(_horizon_evals(curves), horizons=(2000, 2500, 3000, 4000), from_step=2500).set_index("variant")
    assert list(t.index) == ["u/flat", "u/late", "u/repa", "u/slow"] and "speed_2500" not in t      # 2,500 never evaluated
    r = t.loc["u/repa"]
    # by hand: H=2000 target 20, 25 -> 16 over 1000-2000: 1000 + 1000 * 5/9; H=3000 target 15: 2000 + 1000/3;
    # H=4000 target 12, REPA's curve up to 4000: 13 -> 11 over 3000-4000: 3500
    assert r.speed_2000 == pytest.approx((1000 + 1000 * 5 / 9) / 2000, abs=1e-4)
    assert r.speed_3000 == pytest.approx((2000 + 1000 / 3) / 3000, abs=1e-4) and r.speed_4000 == pytest.approx(0.875)
    # from 2,500: margins 2 (noise 0.2) and 1 (noise max(1.5, 0.2)): not ahead beyond the noise at 4,000
    assert not r.fd_ahead_from_2500 and r.fd_smallest_margin == pytest.approx(1) and r.fd_its_noise == pytest.approx(1.5)
    assert r.kid_ahead_from_2500 and r.kid_smallest_margin == pytest.approx(0.05)        # KID noise 0.001
    assert r.repa_fd_drop_last_1000 == pytest.approx(2) and not r.repa_flat and not r.vanilla_flat
    assert t.loc["u/flat"].repa_flat                                                      # dropped 0.4 < noise 1.5
    assert np.isnan(t.loc["u/slow"].speed_4000)
    assert np.isnan(t.loc["u/late"].speed_2000) and t.loc["u/late"].speed_3000 < 1   # only its curve up to H counts
    (tmp_path / "f").mkdir()
    _horizon_evals(curves).to_csv(tmp_path / "f" / "evals.csv", index=False)
    main([str(tmp_path / "f"), "--out", str(tmp_path / "h.csv")])
    assert pd.read_csv(tmp_path / "h.csv").shape[0] == 4 and "speed_4000" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([str(tmp_path / "nothing")])
    (tmp_path / "v").mkdir()
    _horizon_evals({("u/vanilla", 0): van}).to_csv(tmp_path / "v" / "evals.csv", index=False)
    with pytest.raises(SystemExit):                                                       # no REPA run: one line
        main([str(tmp_path / "v")])
    assert "no REPA run beside a vanilla run" in capsys.readouterr().err
