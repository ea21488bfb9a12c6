"""Training side of the REPA toolkit, one sub-package per stage (the README's map):

- ``train.models``: the network (DiT/SiT/REPA, MMDiT) and ``build`` / ``load`` / ``predict``;
- ``train.data``: datasets (Fashion-MNIST, generated sets, folders, captions) and latent codecs;
- ``train.targets``: target encoders, the shipped teachers, target caches;
- ``train.objectives``: the interpolant, the losses and the loss terms (REPA, HASTE, SRA, ...);
- ``train.evaluation``: samplers, FD/KID, CKNNA and the other metrics, linear probes;
- ``train.run``: configs and presets, the training loop, checkpoints, the command lines.

Module names from before this grouping still import (:mod:`train.moved`)."""

from train import moved as _moved

_moved.install()
