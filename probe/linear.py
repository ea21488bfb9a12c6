"""Linear probes (the REPA paper's protocol, every layer x noise level trained at once): the public
names of :mod:`train.evaluation.linear_probe`, where they live so that the trainer's live alignment and the
offline probes fit the same probes.  See :mod:`train.evaluation.linear_probe` for the protocol."""

from train.evaluation.linear_probe import METHODS, LinearProbes, fit_linear_probes, probe_accuracy  # noqa: F401
