"""Sampling and evaluation: samplers (:mod:`~train.evaluation.sampling`, text-to-image
:mod:`~train.evaluation.sampling_t2i`), seeded samples on disk (:mod:`~train.evaluation.samples`),
feature networks and reference statistics (:mod:`~train.evaluation.feature_nets`), generation metrics
(:mod:`~train.evaluation.generation_metrics`: FD, KID, precision/recall), representation metrics
(:mod:`~train.evaluation.metrics`: CKNNA, CKA, LDS/CDS/RMSC) with their input checks
(:mod:`~train.evaluation.checks`), linear probes (:mod:`~train.evaluation.linear_probe`), probe image
sets (:mod:`~train.evaluation.probe_set`), and scoring with ``repa-sample`` / ``python -m
train.evaluation`` (:mod:`~train.evaluation.evaluate`)."""
