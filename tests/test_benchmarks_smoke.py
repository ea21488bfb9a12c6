"""Smoke runs of the benchmark scripts at their ``--quick`` sizes (a few seconds each): they run, check
their own equivalences (features / probe weights) and write their JSON where told."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from train.run.config import preset

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def keep_threads():
    before = torch.get_num_threads()
    yield
    assert torch.get_num_threads() == before  # the scripts restore the thread count they change


def test_bench_layer_sweep_quick(tmp_path, keep_threads):
    out = tmp_path / "layer_sweep.json"
    res = _load("bench_layer_sweep").main(["--quick", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved["models"].keys() == res["models"].keys() == {"tiny"}
    tiny = saved["models"]["tiny"]
    layers = tiny["config"]["layers"]
    assert tiny["features_shape"] == [layers, len(tiny["ts"]), tiny["images"], preset("tiny").model.hidden_size]
    assert set(tiny["ways"]) == {"ours", "per-layer-truncated", "per-layer-full"}
    assert all(d == 0.0 for d in tiny["features_identical_max_abs_diff"].values())
    assert tiny["ways"]["per-layer-full"]["forwards"] == layers * tiny["ways"]["ours"]["forwards"]
    assert all(w["seconds"] > 0 for w in tiny["ways"].values())
    assert saved["machine"]["threads"] == 1 and saved["command"].endswith("--quick --json " + str(out))


def test_bench_linear_probe_quick(tmp_path, keep_threads):
    out = tmp_path / "linear_probe.json"
    _load("bench_linear_probe").main(["--quick", "--json", str(out)])
    saved = json.loads(out.read_text())
    (size,) = saved["sizes"]
    assert size["probes"] == 4 and set(size["methods"]) == {"batched", "one-at-a-time", "sklearn"}
    assert size["batched_vs_one_at_a_time_max_abs_acc_diff"] <= 1 / size["n_test"]
    for m in size["methods"].values():
        assert len(m["accuracies"]) == 4 and 0 <= m["accuracy_min"] <= m["accuracy_max"] <= 1 and m["seconds"] > 0


def test_bench_live_align_quick(tmp_path, keep_threads):
    out = tmp_path / "live_align.json"
    res = _load("bench_live_align").main(["--quick", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved["summary"].keys() == res["summary"].keys() == {"off", "every-10"}
    assert saved["summary"]["off"]["align_calls"] == 0
    assert saved["summary"]["every-10"]["align_calls"] == 3  # steps 0, 10, 20
    assert saved["summary"]["every-10"]["align_seconds_median"] > 0


def test_bench_evaluation_quick(tmp_path, keep_threads):
    """The evaluation's parts are timed, the sampling chunk is profiled by aten op, and the MLP's
    activation is timed beside exact GELU and its fc1 (the figures BENCHMARKS.md quotes)."""
    out = tmp_path / "evaluation.json"
    res = _load("bench_evaluation").main(["--quick", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved["samples"] == 16 and min(saved["evaluation_s"], saved["sampling_s"], saved["scoring_s"]) > 0
    assert res["fd"] == res["fd"]  # a number, not NaN
    assert saved["scoring_same_numbers"] is True and min(saved["scoring_per_half_extraction_s"], saved["scoring_warm_s"]) > 0
    ops = {op["op"] for op in saved["chunk_profile"]["top_ops"]}
    assert "aten::sigmoid_" in ops and "aten::gelu" not in ops  # sampling's GELU is x sigmoid(2z), not ATen's kernel
    assert saved["mlp_ops_ms"]["shape"] == [64 * 64, 256]  # a sampling chunk of 64 images x 64 tokens, width 4 x 64
    assert min(saved["mlp_ops_ms"][k] for k in ("gelu_tanh", "gelu_tanh_inference", "gelu_exact", "fc1_linear")) > 0
    assert saved["machine"]["allocator_kept"] == str(sys.platform.startswith("linux"))


def test_bench_sampling_quick(tmp_path, keep_threads):
    """Four settings (allocator x GELU), each in its own process: the allocator changes no bit, the
    inference GELU moves the samples by float rounding at most."""
    out = tmp_path / "sampling.json"
    _load("bench_sampling").main(["--quick", "--json", str(out)])
    saved = json.loads(out.read_text())
    s = saved["settings"]
    assert set(s) == {"default/aten", "kept/aten", "default/inference", "kept/inference"}
    assert all(v["median_s"] > 0 and len(v["seconds"]) == 1 for v in s.values())
    assert s["kept/aten"]["bitwise_equal_to_default_aten"] and s["kept/aten"]["allocator_kept"] == sys.platform.startswith("linux")
    assert not s["default/aten"]["allocator_kept"]
    assert max(v["max_abs_diff_to_default_aten"] for v in s.values()) < 1e-5
