"""What a checkpoint says it was trained on, so that probes default to it.

A toolkit checkpoint records its run's ``TrainConfig`` (``model.train_config``): the probes then
measure it on its own dataset (and data root), through its own codec, against its own first target
encoder -- a vanilla twin records the encoder of its REPA twin.  Checkpoints that record no run
(published DiT/SiT/REPA files, hand-made state dicts) fall back to :data:`FALLBACK` and the codec
its channel count implies (3: identity, 1: grey, otherwise the SD-VAE); pass ``dataset=`` /
``encoders=`` / ``codec=`` (``--dataset`` / ``--encoders`` / ``--codec``) for those.
"""

from __future__ import annotations

from typing import Any

from train.data.latents import codec_for_channels
from train.errors import UserError

FALLBACK = {"dataset": "shapes", "encoders": ("builtin-teacher",)}
_IMAGE_DATASETS_NEED_ROOT = ("folder",)


def trained_on(model: Any) -> dict[str, Any]:
    """``{"dataset", "data_root", "codec", "encoders", "source"}`` for ``model`` (a loaded
    :class:`train.models.architecture.DiffusionTransformer`); ``source`` is ``"checkpoint"`` when they come
    from its recorded run, ``"fallback"`` otherwise.  A run trained on a latent cache names no image
    dataset the probes could encode, so it gets the fallback dataset (pass one)."""
    run = getattr(model, "train_config", None) or {}
    data = run.get("data") or {}
    # a vanilla twin (train.run.cli.as_vanilla) has no encoders but keeps its REPA twin's as align_encoder
    encoders = tuple(run.get("encoders") or ([run["align_encoder"]] if run.get("align_encoder") else FALLBACK["encoders"]))
    dataset = data.get("dataset")
    codec = data.get("codec") or codec_for_channels(model.cfg.in_channels)
    if dataset in (None, "latents") or (dataset in _IMAGE_DATASETS_NEED_ROOT and not data.get("root")):
        return {"dataset": FALLBACK["dataset"], "data_root": None, "codec": codec,
                "encoders": encoders, "source": "fallback"}
    return {"dataset": dataset, "data_root": data.get("root"), "codec": codec,
            "encoders": encoders, "source": "checkpoint"}


def resolve(cfg: Any, model: Any, dataset: Any = None, encoders: Any = None) -> tuple[Any, Any, tuple]:
    """``(cfg, dataset, encoders)`` with what the caller left unset (``None``) taken from
    :func:`trained_on`: ``dataset`` (with its ``data_root`` when the checkpoint recorded one),
    ``cfg.codec`` and ``encoders`` (the run's first teacher: a run aligned to several is probed against
    the first unless told otherwise, as its vanilla twin records only that one).  ``cfg`` is a :class:`probe.analyses.ProbeConfig` (replaced, not
    changed); ``dataset`` may also be a ``(train, eval)`` pair of image collections."""
    import dataclasses

    found = trained_on(model)
    root = cfg.data_root
    if dataset is None:
        dataset, root = found["dataset"], cfg.data_root or found["data_root"]
    cfg = dataclasses.replace(cfg, dataset=dataset if isinstance(dataset, str) else "custom", data_root=root,
                              codec=cfg.codec or found["codec"])
    return cfg, dataset, tuple(encoders) if encoders else found["encoders"][:1]


def projector_of(model: Any, encoder: str) -> int:
    """Which of ``model``'s projectors was trained against ``encoder``: its position in the run's recorded
    encoders (one projector per encoder, in their order, as REPA's comma-separated ``--enc-type``); 0 for a
    model with one projector.  With several projectors and ``encoder`` not among the run's teachers no
    projector predicts its tokens: refused, naming the ones that do."""
    names = list((getattr(model, "train_config", None) or {}).get("encoders") or [])
    n = len(model.projectors)
    if encoder in names[:n]:
        return names.index(encoder)
    if n <= 1:
        return 0
    raise UserError(f"this checkpoint's {n} projectors were trained against {', '.join(names) or 'unrecorded encoders'}, "
                    f"not {encoder}: pass one of those as the encoder")

