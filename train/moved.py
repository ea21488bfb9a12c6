"""Where each module of ``train`` lived before it was grouped by stage (issue 24), and a finder that
keeps those names importing: ``import train.loop`` or ``python -m train.evaluate`` give the module now
at ``train.run.loop`` / ``train.evaluation.evaluate`` (the same module object, not a copy). New code
uses the new names; this table is for code and notebooks written before the move."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

MOVED = {
    "train.architecture": "train.models.architecture",
    "train.mmdit": "train.models.mmdit",
    "train.diffusers_dit": "train.models.diffusers_dit",
    "train.fashion_mnist": "train.data.fashion_mnist",
    "train.builtin_datasets": "train.data.builtin",
    "train.synthetic": "train.data.synthetic",
    "train.folders": "train.data.folders",
    "train.latents": "train.data.latents",
    "train.latent_cache": "train.data.latent_cache",
    "train.captions": "train.data.captions",
    "train.get_data": "train.data.get_data",
    "train.encoders": "train.targets.encoders",
    "train.hf_encoders": "train.targets.hf_encoders",
    "train.teacher": "train.targets.teacher",
    "train.fit": "train.targets.fit",
    "train.shipped": "train.targets.shipped",
    "train.make_teachers": "train.targets.make_teachers",
    "train.target_cache": "train.targets.stored",
    "train.interpolants": "train.objectives.interpolants",
    "train.losses": "train.objectives.losses",
    "train.reg": "train.objectives.reg",
    "train.objective_defaults": "train.objectives.defaults",
    "train.sampling": "train.evaluation.sampling",
    "train.sampling_t2i": "train.evaluation.sampling_t2i",
    "train.samples": "train.evaluation.samples",
    "train.evaluate": "train.evaluation.evaluate",
    "train.generation_metrics": "train.evaluation.generation_metrics",
    "train.feature_nets": "train.evaluation.feature_nets",
    "train.metrics": "train.evaluation.metrics",
    "train.checks": "train.evaluation.checks",
    "train.linear_probe": "train.evaluation.linear_probe",
    "train.probe_set": "train.evaluation.probe_set",
    "train.config": "train.run.config",
    "train.config_checks": "train.run.config_checks",
    "train.loop": "train.run.loop",
    "train.checkpoints": "train.run.checkpoints",
    "train.rundir": "train.run.rundir",
    "train.cli": "train.run.cli",
    "train.rules": "train.run.rules",
    "train.live_align": "train.run.live_align",
}


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves an old name of :data:`MOVED` to the module at its new name."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self, origin=MOVED[fullname])

    def create_module(self, spec):
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module) -> None:
        # importlib set the alias's spec on the module it got from create_module: give it back its own
        module.__spec__ = importlib.util.spec_from_file_location(module.__name__, module.__file__)

    def get_code(self, fullname):  # python -m <old name>
        new = MOVED[fullname]
        return importlib.util.find_spec(new).loader.get_code(new)


def install() -> None:
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())


def lazy_exports(package: str, source: str, names: list[str]):
    """A package's ``__getattr__`` (PEP 562) that re-exports ``names`` of module ``source``, imported on
    first use: importing the package alone loads nothing, so a module of another stage may import one
    of the package's modules without a circle through the package."""

    def __getattr__(name: str):
        if name in names:
            return getattr(importlib.import_module(source), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
