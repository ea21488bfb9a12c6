import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def random_sit(size: int, depth: int, seed: int = 0):
    """A small SiT (patch 2, width 32, 10 classes) with N(0, 0.1) weights, in eval mode: the zero-gated
    initialisation would make every block the identity, which probes cannot tell apart."""
    from train.models import build

    torch.manual_seed(seed)
    m = build("SiT-T/2", flavour="repa", input_size=size, in_channels=3, depth=depth, hidden_size=32, num_heads=2,
              num_classes=10)
    for p in m.parameters():
        p.data.normal_(0, 0.1)
    return m.eval()


def exit_code(main, argv) -> int:
    """The exit status of a command-line ``main(argv)``: returned, or raised as SystemExit by an option
    its rule refuses where argparse parses it (train.rules)."""
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
