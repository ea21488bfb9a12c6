import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def write_fake_fashion(folder, n_train: int = 512, n_test: int = 256, seed: int = 0, gz: bool = True):
    """A small Fashion-MNIST stand-in in the real IDX format: 28 x 28 grey images of 10 classes, class
    c a bright rectangle whose rows and columns depend on c, plus noise.  Tests never read the real data."""
    from pathlib import Path

    from train.data.fashion_mnist import write_idx

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for stem, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        images = rng.integers(0, 60, size=(n, 28, 28))
        for i, c in enumerate(labels):
            r0, c0 = 2 + 2 * (c % 5), 2 + 4 * (c // 5)
            images[i, r0:r0 + 12, c0:c0 + 10 + c] += 180
        ext = ".gz" if gz else ""
        write_idx(folder / f"{stem}-images-idx3-ubyte{ext}", np.clip(images, 0, 255).astype(np.uint8))
        write_idx(folder / f"{stem}-labels-idx1-ubyte{ext}", labels.astype(np.uint8))
    return folder


# Every test (and every process a test starts) reads this stand-in, never the real Fashion-MNIST
# (train.data.fashion_mnist looks in $REPA_DATA before Debian's folder).
FAKE_FASHION = write_fake_fashion(tempfile.mkdtemp(prefix="fake-fashion-"))
atexit.register(shutil.rmtree, FAKE_FASHION, ignore_errors=True)  # removed when the session ends
os.environ["REPA_DATA"] = str(FAKE_FASHION)


def random_sit(size: int, depth: int, seed: int = 0):
    """A small SiT (patch 2, width 32, 10 classes) with N(0, 0.1) weights, in eval mode: the zero-gated
    initialisation would make every block the identity, which probes cannot tell apart."""
    from train.models.loading import build

    torch.manual_seed(seed)
    m = build("SiT-T/2", flavour="repa", input_size=size, in_channels=3, depth=depth, hidden_size=32, num_heads=2,
              num_classes=10)
    for p in m.parameters():
        p.data.normal_(0, 0.1)
    return m.eval()


def exit_code(main, argv) -> int:
    """The exit status of a command-line ``main(argv)``: returned, or raised as SystemExit by an option
    its rule refuses where argparse parses it (train.run.rules)."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def save_ckpt(model, path, step):
    """``model`` as a toolkit checkpoint at ``path`` (its weights as both training and EMA weights)."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    sd = model.state_dict()
    torch.save({"model_config": model.cfg.to_dict(), "model": sd, "ema": sd, "step": step}, path)
    return path


def random_uint8_images(n: int = 2, size: int = 32) -> torch.Tensor:
    """``n`` fixed random RGB images (uint8), the same in every test that asks for them."""
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def offline_cache(monkeypatch, folder) -> None:
    """No hub downloads, and a cache of the test's own (nothing read from or left in the user's)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("REPA_CACHE", str(folder))


SMALL_SIZE, SMALL_DEPTH = 8, 3  # the small random SiT and shapes images of the seeing-inside tests


def small_sit(seed: int = 0):
    return random_sit(SMALL_SIZE, SMALL_DEPTH, seed)


def small_shapes(n: int = 20):
    from train.data.datasets import build_dataset

    return build_dataset("shapes", "val", n=n, size=SMALL_SIZE)


@pytest.fixture(scope="module")
def images():
    """20 shapes val images at :data:`SMALL_SIZE` (the seeing-inside tests' evaluation set)."""
    return small_shapes()


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """``$REPA_CACHE`` in the test's own folder (nothing read from or left in the user's cache)."""
    monkeypatch.setenv("REPA_CACHE", str(tmp_path / "cache"))
