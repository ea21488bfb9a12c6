"""The network and its loading: the DiT/SiT/REPA architecture (:mod:`~train.models.architecture`),
REPA's text-to-image MMDiT (:mod:`~train.models.mmdit`), diffusers' DiT layout
(:mod:`~train.models.diffusers_dit`), and building, loading and calling any of them
(:mod:`~train.models.loading`: ``build``, ``load``, ``predict``), re-exported here."""

from train.moved import lazy_exports

__all__ = [
    "REG_KEYS", "SIZES", "Attention", "Block", "ConvProjector", "DiffusionTransformer", "FinalLayer",
    "LabelEmbedder", "Mlp", "ModelConfig", "ModelOutput", "PatchEmbed", "TimestepEmbedder", "build",
    "build_model", "build_projector", "infer_config", "load", "model_time", "modulate", "null_labels",
    "num_params", "official_reg_layout", "parse_name", "predict", "sincos_1d", "sincos_2d",
    "timestep_embedding",
]
__getattr__ = lazy_exports(__name__, "train.models.loading", __all__)
