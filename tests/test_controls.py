"""The shuffled-target controls: ``target_shuffle="class"`` (each image's REPA targets come from
another image of its class, so the class statistics of the teacher's tokens stay and the
image-specific part goes) and ``"image"`` (from a random other image: the class goes too)."""

import dataclasses

import pytest
import torch

from train.run.config import preset
from train.errors import UserError
from train.run.loop import TargetSource, class_partners, image_partners


def test_class_partners_is_a_within_class_derangement():
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 1, 1, 3, 2])
    p = class_partners(labels, seed=0)
    assert torch.equal(labels[p], labels)                     # same class
    assert (p[labels != 3] != torch.arange(10)[labels != 3]).all()  # another image where the class has two or more
    assert p[8] == 8                                           # alone in its class: itself
    assert sorted(p.tolist()) == list(range(10))                # a permutation: every image's targets used once
    many = torch.arange(200) % 4
    assert torch.equal(class_partners(many, 0), class_partners(many, 0))
    assert not torch.equal(class_partners(many, 1), class_partners(many, 0))


def test_image_partners_is_one_cycle_through_all_images():
    p = image_partners(50, seed=0)
    assert sorted(p.tolist()) == list(range(50)) and (p != torch.arange(50)).all()  # a derangement
    seen, i = set(), 0  # one cycle: following partners visits every image
    while i not in seen:
        seen.add(i)
        i = int(p[i])
    assert len(seen) == 50
    assert torch.equal(image_partners(50, 0), p) and not torch.equal(image_partners(50, 1), p)
    labels = torch.arange(50) % 10
    assert (labels[p] != labels).float().mean() > 0.7  # across classes, unlike class_partners


def test_target_source_reads_the_partners_tokens():
    tokens = torch.arange(6, dtype=torch.float16).view(6, 1, 1).expand(6, 4, 2).contiguous()

    class Enc(torch.nn.Module):
        name, dim, provenance = "fake", 2, {}

        def forward(self, x):
            return torch.zeros(len(x), 4, 2)

    src = TargetSource([Enc()], torch.zeros(6, 3, 4, 4, dtype=torch.uint8), cache=False, device="cpu")
    src.sources = [(tokens, None)]
    src.partners = torch.tensor([2, 0, 1, 5, 3, 4])
    out = src(torch.tensor([0, 3]), torch.zeros(2, 3, 4, 4, dtype=torch.uint8))[0]
    assert out[:, 0, 0].tolist() == [2.0, 5.0]


def test_with_two_teachers_both_targets_come_from_the_same_partner():
    """The shuffled control with several encoders: one partner draw for all of them (image i gets image
    partner[i]'s tokens from every teacher), not a partner per teacher."""
    tokens = torch.arange(6, dtype=torch.float16).view(6, 1, 1).expand(6, 4, 2).contiguous()

    class Enc(torch.nn.Module):
        name, dim, provenance = "fake", 2, {}

        def forward(self, x):
            return torch.zeros(len(x), 4, 2)

    src = TargetSource([Enc(), Enc()], torch.zeros(6, 3, 4, 4, dtype=torch.uint8), cache=False, device="cpu")
    src.sources = [(tokens, None), (10 + tokens, None)]
    src.partners = torch.tensor([2, 0, 1, 5, 3, 4])
    first, second = src(torch.tensor([0, 3]), torch.zeros(2, 3, 4, 4, dtype=torch.uint8))
    assert first[:, 0, 0].tolist() == [2.0, 5.0] and second[:, 0, 0].tolist() == [12.0, 15.0]


def test_bad_values_are_one_line_errors():
    cfg = dataclasses.replace(preset("tiny"), target_shuffle="all")
    assert any("target_shuffle 'all' is unknown" in e for e in cfg.check())


@pytest.mark.slow
def test_a_short_control_run_trains(tmp_path):
    from train.run.loop import train

    cfg = dataclasses.replace(preset("tiny"), steps=2, target_shuffle="class", eval_every=0, sample_every=0,
                              threads=1, data=dataclasses.replace(preset("tiny").data, n_train=64))
    cfg = dataclasses.replace(cfg, random_init_encoders=True)
    latest = train(cfg, tmp_path / "run", progress=False)
    assert latest.exists()
    assert train(dataclasses.replace(cfg, target_shuffle="image"), tmp_path / "image", progress=False).exists()
    with pytest.raises(UserError, match="reads another image.s cached targets"):
        train(dataclasses.replace(cfg, cache_targets=False), tmp_path / "online", progress=False)


def test_one_bare_encoder_name_is_one_encoder():
    from train.run.config import override

    cfg = override(preset("tiny"), ["encoders=builtin-dense"])  # not JSON: a bare string
    assert cfg.encoders == ("builtin-dense",) and cfg.check() == []
