"""The run: typed configs and presets (:mod:`~train.run.config`, :mod:`~train.run.presets`, their checks
:mod:`~train.run.config_checks` and the option rules :mod:`~train.run.rules`), the training loop as named
phases (:mod:`~train.run.loop`), checkpoints and run directories (:mod:`~train.run.checkpoints`,
:mod:`~train.run.rundir`), live alignment during training (:mod:`~train.run.live_align`), and the
command lines ``repa-train`` / ``repa-sample`` (:mod:`~train.run.cli`)."""
