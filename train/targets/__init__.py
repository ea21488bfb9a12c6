"""What REPA aligns to: target encoders by name (:mod:`~train.targets.encoders`, Hugging Face ones in
:mod:`~train.targets.hf_encoders`, their specs in :mod:`~train.targets.spec`), the built-in and shipped
teachers (:mod:`~train.targets.teacher`, :mod:`~train.targets.fit`, :mod:`~train.targets.shipped`,
``make teachers``: :mod:`~train.targets.make_teachers`), stored target caches
(:mod:`~train.targets.stored`), and where a batch's targets come from
(:mod:`~train.targets.source`: :class:`TargetSource`), re-exported here."""

from train.moved import lazy_exports

__all__ = [
    "TargetSource", "class_partners", "image_partners", "shared_target_file",
]
__getattr__ = lazy_exports(__name__, "train.targets.source", __all__)
