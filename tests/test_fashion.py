"""Fashion-MNIST (read from small IDX files the tests write), the grey codec, KID, resumable fitting
of the built-in networks, and shipped weights checked by sha256."""

import dataclasses
import json
import os

import numpy as np
import pytest
import torch

from conftest import FAKE_FASHION, write_fake_fashion
from train.data import fashion_mnist
from train.data.fashion_mnist import FashionMNISTDataset, read_idx, write_idx
from train.errors import UserError
from train.targets.shipped import SHIPPED


def test_idx_round_trip(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28)).astype(np.uint8)
    for name in ("x-idx3-ubyte", "x-idx3-ubyte.gz"):
        assert np.array_equal(read_idx(write_idx(tmp_path / name, a)), a)
    assert np.array_equal(read_idx(write_idx(tmp_path / "l.gz", np.arange(7, dtype=np.uint8))), np.arange(7))


def test_dataset_from_repa_data_and_explicit_root(tmp_path):
    ds = FashionMNISTDataset("train")  # REPA_DATA (conftest): the stand-in
    assert ds.images.shape == (512, 3, 16, 16) and ds.images.dtype == torch.uint8
    assert torch.equal(ds.images[:, 0], ds.images[:, 2])  # grey in all three channels
    assert len(FashionMNISTDataset("val")) == len(FashionMNISTDataset("test")) == 256
    # torchvision's layout, uncompressed files, native size, first n
    write_fake_fashion(tmp_path / "FashionMNIST" / "raw", n_train=40, n_test=20, gz=False)
    ds = FashionMNISTDataset("train", n=30, size=28, root=tmp_path)
    assert ds.images.shape == (30, 3, 28, 28)
    raw = read_idx(tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte")
    assert torch.equal(ds.images[:, 0], torch.from_numpy(raw[:30].copy()))  # 28 px: the bytes themselves
    assert ds[3][1] == int(read_idx(tmp_path / "FashionMNIST" / "raw" / "train-labels-idx1-ubyte")[3])


def test_resize_is_antialiased_bilinear():
    ds28, ds16 = FashionMNISTDataset("val", size=28), FashionMNISTDataset("val", size=16)
    ref = torch.nn.functional.interpolate(ds28.images[:, :1].float(), size=(16, 16), mode="bilinear",
                                          align_corners=False, antialias=True).round().clamp(0, 255)
    assert torch.equal(ds16.images[:, :1].float(), ref)


def test_missing_data_is_one_line_naming_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("REPA_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("REPA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.setattr(fashion_mnist, "_try_download", lambda folder: False)  # offline
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist") as e:
        FashionMNISTDataset("train")
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="no Fashion-MNIST train files"):
        FashionMNISTDataset("train", root=tmp_path)


def test_truncated_file_and_bad_arguments_are_one_line(tmp_path):
    folder = write_fake_fashion(tmp_path / "d", n_train=20, n_test=10, gz=False)
    path = folder / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(UserError, match="truncated"):
        FashionMNISTDataset("val", root=folder)
    (folder / "t10k-labels-idx1-ubyte").write_bytes(b"junk")
    with pytest.raises(UserError, match="magic"):
        read_idx(folder / "t10k-labels-idx1-ubyte")
    with pytest.raises(UserError, match="split"):
        FashionMNISTDataset("dev")
    with pytest.raises(UserError, match="image size"):
        FashionMNISTDataset("train", size=2)


def test_registered_by_name_for_data_teachers_and_evaluator():
    from train.data.builtin import BUILTIN
    from train.data.datasets import DATASETS, build_dataset

    assert "fashion-mnist" in DATASETS and "fashion-mnist" in BUILTIN
    assert len(build_dataset("fashion-mnist", "train", size=16)) == 512


def test_grey_codec_round_trip():
    from train.data.latents import build_codec

    codec = build_codec("grey")
    images = FashionMNISTDataset("val").images[:4]
    z = codec.encode(images)
    assert z.shape == (4, 1, 16, 16) and codec.latent_shape(16) == (1, 16, 16)
    assert torch.equal(codec.decode(z, uint8=True), images)


def test_kid_equals_torch_fidelity():
    from torch_fidelity.metric_kid import kid_features_to_metric

    from train.evaluation.generation_metrics import kid

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(300, 12)), rng.normal(size=(250, 12)) + 0.2
    ours = kid(a, b, subsets=15, subset_size=100, seed=5)
    ref = kid_features_to_metric(torch.from_numpy(a), torch.from_numpy(b), kid_subsets=15, kid_subset_size=100,
                                 kid_kernel="poly", kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None,
                                 kid_kernel_poly_coef0=1, rng_seed=5, verbose=False)
    assert ours["kid"] == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-12)
    assert ours["kid_std"] == pytest.approx(ref["kernel_inception_distance_std"], rel=1e-12)
    same = kid(a[:150], a[150:], subsets=20, subset_size=100)
    assert abs(same["kid"]) < ours["kid"]  # unbiased: near 0 for one distribution
    with pytest.raises(ValueError, match="at least 100 row"):
        kid(a[:50], b, subset_size=100)
    with pytest.raises(ValueError, match="NaN or infinite"):
        kid(np.full((200, 12), np.nan), b, subset_size=100)


def test_mmd2_unbiased_against_the_double_sum():
    from train.evaluation.generation_metrics import _mmd2_unbiased

    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(7, 3)), rng.normal(size=(7, 3))
    k = lambda a, b: (a @ b / 3 + 1) ** 3  # noqa: E731
    m = len(x)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2
    assert _mmd2_unbiased(x, y, 3, 1 / 3, 1.0) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


def _tiny_ssl():
    from train.targets.teacher import TEACHERS

    return dataclasses.replace(TEACHERS["fashion-ssl"], steps=6, warmup=2, batch_size=8, width=32, heads=2, depth=1,
                               n_train=64)


def test_fit_resumes_bitwise_after_an_interruption(tmp_path):
    """A build killed after its step-4 state resumes there and ends with the uninterrupted weights."""
    from train.targets.fit import fit
    from train.targets.pretext import pretext_loss
    from train.targets.teacher import TeacherViT, _dataset

    cfg = _tiny_ssl()
    data = _dataset(cfg, "train")

    def run(state, fail_at=None):
        gen = torch.Generator().manual_seed(cfg.seed)
        torch.manual_seed(0)
        model = TeacherViT(cfg)
        loss, calls = pretext_loss(model, data, gen), [0]

        def batch_loss(idx):
            calls[0] += 1
            if calls[0] == fail_at:
                raise KeyboardInterrupt
            return loss(idx)
        return fit(model, cfg, gen, batch_loss, len(data), "t", progress=False, state_path=state, save_every=2)

    full = run(None).state_dict()
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "s.pt", fail_at=6)  # dies in step 6, after the state of step 4 was written
    assert torch.load(tmp_path / "s.pt", weights_only=True)["step"] == 4
    resumed = run(tmp_path / "s.pt").state_dict()
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_shipped_weights_are_checked_by_sha256(tmp_path):
    from train.targets.shipped import SUMS, sha256, verified_path, write_sum

    (tmp_path / "fashion-ssl.safetensors").write_bytes(b"weights")
    with pytest.raises(UserError, match="no digest"):
        verified_path("fashion-ssl", tmp_path)
    write_sum("fashion-ssl.safetensors", sha256(tmp_path / "fashion-ssl.safetensors"), tmp_path)
    assert verified_path("fashion-ssl", tmp_path) == tmp_path / "fashion-ssl.safetensors"
    assert (tmp_path / SUMS).read_text().endswith("  fashion-ssl.safetensors\n")
    (tmp_path / "fashion-ssl.safetensors").write_bytes(b"other weights")
    with pytest.raises(UserError, match="damaged or replaced"):
        verified_path("fashion-ssl", tmp_path)
    with pytest.raises(UserError, match="missing"):
        verified_path("fashion-supervised", tmp_path)
    with pytest.raises(UserError, match="not a shipped"):
        verified_path("dinov2", tmp_path)


def test_make_teachers_recipe_writes_weights_card_and_digest(tmp_path, monkeypatch):
    """The recipe on tiny settings: weights, a card with compute and measures, a digest that verifies,
    and a loadable encoder; a second call skips what is built."""
    import train.evaluation.feature_nets as fn
    import train.targets.teacher as teacher
    from train.targets.encoders import load_encoder
    from train.targets.make_teachers import main
    from train.targets.shipped import sha256, verified_path

    monkeypatch.setenv("REPA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(teacher.TEACHERS, "fashion-ssl", dataclasses.replace(_tiny_ssl(), threads=2))
    monkeypatch.setitem(fn.EVALUATORS, "fashion-mnist", dataclasses.replace(fn.EVALUATORS["fashion-mnist"], steps=3,
                                                                           warmup=1, batch_size=8, widths=(8, 8, 8)))
    out = tmp_path / "weights"
    assert main(["fashion-ssl", "fashion-evaluator", "--out", str(out), "--no-progress"]) == 0
    card = json.loads((out / "fashion-ssl.json").read_text())
    assert card["sha256"] == sha256(out / "fashion-ssl.safetensors")
    assert verified_path("fashion-ssl", out) and verified_path("fashion-evaluator", out)
    compute = card["compute"]
    assert compute["image_passes"] == 6 * 8 and compute["image_passes_x_parameters"] == 48 * compute["parameters"]
    for key in ("knn_accuracy", "linear_probe_accuracy", "lds", "cds", "rmsc", "class_r2"):
        assert np.isfinite(card["measures"][key])
    assert card["recipe"]["config"]["steps"] == 6 and card["code_revision"] and card["recipe"]["threads"] == 2
    enc = load_encoder("fashion-ssl", weights=out / "fashion-ssl.safetensors")
    assert enc(FashionMNISTDataset("val").images[:2]).shape == (2, 64, 32)
    ev = json.loads((out / "fashion-evaluator.json").read_text())
    assert 0 <= ev["measures"]["test_accuracy"] <= 1
    mtime = os.path.getmtime(out / "fashion-ssl.safetensors")
    assert main(["fashion-ssl", "--out", str(out), "--no-progress"]) == 0
    assert os.path.getmtime(out / "fashion-ssl.safetensors") == mtime
    assert main(["nonsense", "--out", str(out)]) == 2


def test_fake_data_is_what_tests_read():
    assert os.environ["REPA_DATA"] == str(FAKE_FASHION)


def test_get_data_says_what_it_found_or_how_to_get_it(tmp_path, monkeypatch, capsys):
    from train.data import get_data

    assert get_data.main() == 0
    assert f"found in {FAKE_FASHION}" in capsys.readouterr().out
    monkeypatch.setenv("REPA_DATA", str(tmp_path / "none"))
    monkeypatch.setenv("REPA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.setattr(get_data, "DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.setattr(fashion_mnist, "_try_download", lambda folder: False)
    monkeypatch.setattr(get_data, "_apt_install", lambda: False)  # not root, or no apt
    assert get_data.main() == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "apt-get install dataset-fashion-mnist" in err


def test_the_demo_student_of_the_cards_is_the_tiny_preset():
    """The unit of the teachers' compute (make_teachers.DEMO_STUDENT) is the default preset's REPA student."""
    from train.run.config import preset
    from train.targets.make_teachers import DEMO_STUDENT
    from train.models.loading import build_model

    cfg = preset("tiny")
    model = build_model(cfg.model)
    assert sum(p.numel() for p in model.parameters()) == DEMO_STUDENT["parameters"]
    assert cfg.batch_size == DEMO_STUDENT["batch_size"] and cfg.steps <= DEMO_STUDENT["steps"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_networks_verify_load_and_meet_their_bars(name):
    """The committed weights: their digest, their card, and what issue 21 asks of them."""
    from train.targets.shipped import sha256, verified_path

    path = verified_path(name)
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["sha256"] == sha256(path) and card["code_revision"]
    images = FashionMNISTDataset("val").images[:4]
    if name == "fashion-evaluator":
        from train.evaluation.feature_nets import load_feature_net

        assert card["measures"]["test_accuracy"] >= 0.90
        net = load_feature_net("builtin-evaluator", dataset="fashion-mnist")
        assert net.provenance["weights"] == str(path.resolve()) and net(images)["class_logits"].shape == (4, 10)
    else:
        from train.targets.encoders import load_encoder

        assert card["compute"]["ratio_to_demo_student"] >= 20 and card["recipe"]["config"]["n_train"] == 60_000
        assert card["recipe"]["threads"] == card["recipe"]["config"]["threads"]  # the count it was built on, which the weights depend on
        enc = load_encoder(name)
        assert enc.provenance["weights"] == f"shipped:{name}:{path.name}" and enc(images).shape == (4, 64, 128)
