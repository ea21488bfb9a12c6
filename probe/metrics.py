"""Representation-alignment metrics (CKNNA, CKA, mutual k-NN, ``prepare``) and iREPA's spatial
metrics (LDS, CDS, RMSC): the public names of :mod:`train.evaluation.metrics`, where they live so that the
trainer's live alignment (``train.run.live_align``) and the offline probes compute with the same
functions (``train`` never imports ``probe``).  See :mod:`train.evaluation.metrics` for the definitions."""

from train.evaluation.metrics import *  # noqa: F401,F403 - the public API, re-exported
from train.evaluation.metrics import _cka_dense, _cknna_dense, _mutual_knn_dense  # noqa: F401 - brute-force forms (tests, benchmarks)
