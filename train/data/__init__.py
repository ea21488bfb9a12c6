"""Training data and latent codecs: the built-in datasets (:mod:`~train.data.fashion_mnist`, the
generated :mod:`~train.data.synthetic` sets, their registry :mod:`~train.data.builtin`), image folders
(:mod:`~train.data.folders`), captions (:mod:`~train.data.captions`), the pixel and SD-VAE codecs
(:mod:`~train.data.latents`), the latent cache (:mod:`~train.data.latent_cache`), getting the real data
(:mod:`~train.data.get_data`), and :func:`build_dataset` / ``python -m train.data``
(:mod:`~train.data.datasets`), re-exported here."""

from train.moved import lazy_exports

__all__ = [
    "BUILTIN", "CAPTIONED", "DATASETS", "GENERATED", "IMAGE_EXTENSIONS", "MANIFEST", "SCENE_CLASSES",
    "SHAPE_CLASSES", "TARGETS_FORMAT", "TARGETS_INFO", "DigitsDataset", "FashionMNISTDataset",
    "ImageFolderDataset", "LatentCacheDataset", "ScenesDataset", "ShapesDataset", "StoredTargets",
    "build_dataset", "build_latent_cache", "build_target_cache", "center_crop_arr", "encode_main",
    "encoder_key", "open_target_cache", "render_scenes", "render_shapes", "target_dir", "validate_dataset",
]
__getattr__ = lazy_exports(__name__, "train.data.datasets", __all__)
