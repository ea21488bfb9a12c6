"""What every value a user types must be: one table (:data:`RULES`) for every option of every entry
point and every numeric or path field of ``TrainConfig`` / ``ModelConfig`` / ``DataConfig``.

A :class:`Rule` says the kind (integer, finite number, existing file, existing folder, writable
folder, ...), the range, and what to use instead; where a range admits 0 the rule says what 0
means (``zero``), so the generated battery (``tests/test_fuzz_cli.py``) knows that 0 is an answer
and not an accident.  The checks run where a value is parsed:

* command-line options: ``type=option(NAME)`` on the argparse argument (a value given twice is
  checked both times); :class:`Parser` prints argparse's refusals as one line and exits 2;
* config fields: ``train.run.config.override`` checks each ``--set FIELD=VALUE`` as it is applied
  (:func:`field_problem`: the field's type hint, then its rule) and ``repa-train --config`` checks
  every field of the file; ``TrainConfig.check`` runs :func:`number_problem` on every numeric field
  of a config built in Python.

No torch import: ``--help`` and ``--dry-run`` stay instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NoReturn

INF = math.inf
NUMERIC = ("int", "float")
PATHS = ("file", "dir", "path", "out", "weights", "named")


@dataclass(frozen=True)
class Rule:
    """``kind``: ``int`` / ``float`` (finite) in ``lo .. hi`` (``lo_ok`` / ``hi_ok``: the end itself
    allowed); ``file`` / ``dir`` / ``path`` (must exist: a file, a folder, either); ``out`` (a
    folder that is or can be made, writable); ``weights`` (``''`` for the default, else an existing
    path); ``named`` (``PATH`` or ``NAME=PATH``, the path existing); ``layers`` (``all`` or block
    numbers >= 0); ``device``.  ``fix``: what to use.  ``zero``: what 0 means where it is allowed."""

    kind: str
    lo: float = -INF
    hi: float = INF
    lo_ok: bool = True
    hi_ok: bool = True
    fix: str = ""
    zero: str = ""

    def span(self) -> str:
        if self.hi == INF:
            return f"{'>=' if self.lo_ok else '>'} {self.lo:g}"
        return f"in {'[' if self.lo_ok else '('}{self.lo:g}, {self.hi:g}{']' if self.hi_ok else ')'}"


def I(lo: int, fix: str, zero: str = "", hi: float = INF) -> Rule:  # noqa: E743 - an integer rule
    return Rule("int", lo, hi, fix=fix, zero=zero)


def F(lo: float, fix: str, zero: str = "", hi: float = INF, lo_ok: bool = True, hi_ok: bool = True) -> Rule:
    return Rule("float", lo, hi, lo_ok, hi_ok, fix, zero)


POS = "a positive integer"
SEED = I(0, "a non-negative integer", "seed 0, a seed like any other", hi=2**63 - 1)
BLOCK0 = "the paper's depth ratio"

# the table: config fields by their dotted name (elements of a tuple field by the field's name) ...
FIELD_RULES: dict[str, Rule] = {
    # --- TrainConfig ---
    "lr": F(0, "a learning rate such as 1e-4", hi=1, lo_ok=False),
    "max_grad_norm": F(0, "1.0", lo_ok=False),
    "adam_eps": F(0, "1e-8", hi=1, lo_ok=False),
    "weight_decay": F(0, "0", "no weight decay"),
    "betas": F(0, "[0.9, 0.999]", "no momentum", hi=1, hi_ok=False),
    "proj_coeff": F(0, "0 (vanilla) or a positive lambda such as 0.5", "the vanilla baseline (no REPA)"),
    "nt_xent_temperature": F(0, "0.1", lo_ok=False),
    "target_norm_gamma": F(0, "0.6 (latent SiT) or 0.8 (pixel JiT)", "no mean subtraction", hi=1),
    "target_norm_eps": F(0, "1e-6", lo_ok=False),
    "reg_coeff": F(0, "0 (no REG) or a positive weight such as 0.03 (the paper's)", "no REG"),
    "align_stop_step": I(0, "0 (never) or the step HASTE stops alignment at, e.g. 250000", "never stop"),
    "attn_coeff": F(0, "0 (off) or HASTE's 0.5", "no attention distillation"),
    "attn_teacher_layers": I(1, "1-based encoder blocks, e.g. [9, 10, 11, 12]"),
    "attn_model_layers": I(1, "1-based model blocks, e.g. [5, 6, 7, 8]"),
    "sra_coeff": F(0, "0 (off) or SRA's 2.0 (smooth_l1) / 0.5 (cosine)", "no SRA"),
    "sra_student_block": I(0, "0 (the paper's ratio) or a 1-based block", BLOCK0),
    "sra_teacher_block": I(0, "0 (the paper's ratio) or a 1-based block", BLOCK0),
    "sra_t_max": F(0, "SRA's 0.2", "the teacher at the student's noise level", hi=1),
    "dispersive_coeff": F(0, "0 (off) or the paper's 0.5", "no dispersive loss"),
    "dispersive_tau": F(0, "the paper's 0.5 (or 1 at the last block)", lo_ok=False),
    "dispersive_block": I(0, "0 (depth // 4) or a 1-based block", "depth // 4"),
    "ema_decay": F(0, "a number in [0, 1] such as 0.9999", "the EMA follows the weights", hi=1),
    "batch_size": I(1, POS),
    "grad_accum": I(1, POS),
    "steps": I(1, POS),
    "log_every": I(1, POS),
    "ckpt_every": I(1, POS),
    "sample_every": I(0, "0 (never) or a positive integer", "no sample grids"),
    "sample_steps": I(1, "a positive integer such as 50"),
    "eval_every": I(0, "0 (never) or a positive integer", "no evaluation"),
    "eval_samples": I(1, POS),
    "align_every": I(0, "0 (off) or a positive integer such as 100", "no live alignment"),
    "align_layers": I(0, "block indices such as [2]", "the patch embedding (layer 0)"),
    "align_ts": F(0, "REPA times in [0, 1], e.g. [0, 0.5]", "clean images", hi=1),
    "align_images": I(11, "an integer above 10 (k = 10 neighbours) such as 256"),
    "align_train_images": I(0, "0 (no linear probe) or at least 2, such as 256", "no linear probe"),
    "align_token_samples": I(11, "an integer above 10 such as 2000"),
    "align_seed": SEED,
    "seed": SEED,
    "threads": I(0, "0 (the torch default) or a positive integer", "the torch default", hi=4096),
    "encoder_weights": Rule("weights", fix="one local weights path per encoder ('' for the default)"),
    # --- ModelConfig ---
    "model.input_size": I(1, "the latent (or image) side, e.g. 32"),
    "model.in_channels": I(1, "3 (pixels) or 4 (SD-VAE latents)"),
    "model.num_classes": I(1, "the number of classes, e.g. 1000"),
    "model.class_dropout_prob": F(0, "0.1", "no label dropout (no guidance)", hi=1),
    "model.encoder_depth": I(1, "a 1-based block such as 8 (or null: the size's default)"),
    "model.z_dims": I(1, "the target encoders' widths, e.g. [768]"),
    "model.projector_dim": I(1, "2048 (REPA)"),
    "model.projector_kernel": I(1, "1, 3, 5 or 7"),
    "model.depth": I(1, "a positive integer (or null: the size's)"),
    "model.hidden_size": I(1, "a positive integer (or null: the size's)"),
    "model.num_heads": I(1, "a positive integer (or null: the size's)"),
    "model.mlp_ratio": F(0, "4.0", lo_ok=False),
    "model.timestep_freq_shift": I(0, "0 (published DiT/SiT) or 1 (diffusers)", "the published timestep frequencies", hi=1),
    "model.mlp_norm_eps": F(0, "1e-6", lo_ok=False),
    "model.reg_dim": I(0, "0 (no REG) or the first encoder's width", "no REG token"),
    "model.sra_projector_dim": I(0, "0 (no SRA) or 2 * hidden_size", "no SRA projector"),
    "model.context_dim": I(0, "the caption features' width of an MMDiT, e.g. 768 (CLIP)", "no captions (not an MMDiT)"),
    "model.context_len": I(0, "the caption token count of an MMDiT, e.g. 77", "taken from the dataset's empty caption"),
    "model.register_length": I(0, "0 or a number of MMDiT register tokens", "no registers"),
    # --- DataConfig ---
    "data.image_size": I(1, "the image side in pixels, e.g. 256"),
    "data.n_train": I(1, "a positive integer (or null: the dataset's default)"),
    "data.num_workers": I(0, "0 (the main process) or a positive integer", "load in the main process"),
    "data.root": Rule("dir", fix="pass the folder that holds the images or the latent cache"),
}
# ... and the options of the entry points that are not config fields (``type=option(NAME)``)
OPTION_RULES: dict[str, Rule] = {
    "prompts": Rule("file", fix="pass a text file with one caption per line"),
    "context_features": Rule("file", fix="pass an .npy of caption features, (tokens, width) or (N, tokens, width)"),
    "null_context": Rule("file", fix="pass the feature folder's empty_context.npy"),
    "config_file": Rule("file", fix="pass a JSON config such as a run's config.json"),
    "out": Rule("out", fix="pass a writable --out folder"),
    "checkpoint": Rule("path", fix="pass a checkpoint file (or a diffusers folder)"),
    "run_dir": Rule("dir", fix="pass a run directory written by repa-train"),
    "named_checkpoint": Rule("named", fix="pass PATH or NAME=PATH of an existing checkpoint"),
    "table": Rule("file", fix="pass a .parquet or .csv written by repa-probe sweep / progress / compare"),
    "samples": Rule("path", fix="pass an .npz or a folder written by repa-sample"),
    "image_root": Rule("dir", fix="pass the folder with one subfolder per class"),
    "latent_cache": Rule("dir", fix="pass a latent cache folder made by python -m train.data encode"),
    "feature_weights": Rule("path", fix="pass the feature network's local weights file or folder"),
    "inception_weights": Rule("file", fix="pass pytorch-fid's pt_inception-2015-12-05-6726825d.pth"),
    "device": Rule("device", fix="auto, cpu, cuda or cuda:N"),
    "layers": Rule("layers", fix="'all' or block numbers, e.g. 2 4 6"),
    "jobs": I(1, "a positive integer such as 2"),
    "sample_steps_cli": I(1, "sampler steps such as 50"),
    "cfg_scale": F(0, "1 (no guidance) or a scale such as 4", "unconditional samples"),
    "guidance": F(0, "REPA times in [0, 1], low <= high", "guidance from t = 0 (data)", hi=1),
    "num_samples": I(1, "a positive integer such as 1000"),
    "class_id": I(0, "a class id of the model", "class 0"),
    "ref_n": I(2, "at least 2 reference images (FD), e.g. 10000"),
    "pr_k": I(1, "the paper's 3"),
    "k": I(2, "the paper's 10"),
    "n_images": I(1, "a positive integer such as 500"),
    "n_train": I(0, "0 (no linear probes) or at least 2, e.g. 500", "no linear probes"),
    "n_fit": I(1, "a positive integer such as 64"),
    "image_size": I(1, "the image side in pixels, e.g. 32"),
    "t": F(0, "REPA times in [0, 1], e.g. 0 0.25 0.5", "clean images", hi=1),
    "token_samples": I(1, "a positive integer such as 2000"),
    "r_near": I(1, "1 (iREPA)"),
    "r_far": I(2, "iREPA's 6 on a 16 x 16 grid (or leave it out: scaled to the grid)"),
    "q": F(0, "0.95, or 1 to disable clipping", hi=1, lo_ok=False),
    "probe_epochs": I(1, "the paper's 90"),
    "probe_lr": F(0, "1e-3", lo_ok=False),
    "probe_layers": I(0, "block numbers such as 2 4", "the patch embedding (layer 0)"),
    "ridge": F(0, "1e-2", lo_ok=False),
    "image_px": I(1, "the image side in pixels, e.g. 256"),
    "shard_size": I(1, "a positive integer such as 1024"),
    "grid": I(1, "tokens per side, e.g. 16"),
}
RULES: dict[str, Rule] = {**FIELD_RULES, **OPTION_RULES}

# options that take free text, checked where they are used (names of datasets, encoders, codecs,
# hub weights, splits), not by a rule: the battery passes over exactly these
TEXT = {"--dataset": "a dataset name (train.data.datasets.DATASETS)", "--split": "a split name", "--train-split": "a split name",
        "--codec": "a codec name", "--encoders": "encoder names (train.targets.encoders.ENCODERS)", "--encoder": "an encoder name",
        "--vae": "a hub name or a local diffusers folder", "--name": "a model name", "--feature": "a feature network name",
        "--ref-split": "a split name", "--set": "FIELD=VALUE, each checked by the field's rule (train.run.config.override)",
        "--metrics": "metric names"}


def finite(value) -> bool:
    """A real number (not a bool, not a string), finite."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def number_problem(rule: Rule, value: Any) -> str | None:
    """Why ``value`` breaks the numeric ``rule`` (``"is not an integer >= 1: use ..."``), or None."""
    integer = rule.kind == "int"
    typed = (isinstance(value, int) and not isinstance(value, bool)) if integer else finite(value)
    if typed and (rule.lo <= value if rule.lo_ok else rule.lo < value) and (value <= rule.hi if rule.hi_ok else value < rule.hi):
        return None
    return f"is not {'an integer' if integer else 'a finite number'} {rule.span()}: use {rule.fix}"


def path_problem(rule: Rule, text: str) -> str | None:
    """Why the path ``text`` cannot be what ``rule`` asks for, or None."""
    if rule.kind == "weights" and text == "":
        return None
    if rule.kind == "named":
        text = text.split("=", 1)[1] if "=" in text and not Path(text).exists() else text
    p = Path(text)
    if rule.kind == "out":
        if p.exists() and not p.is_dir():
            return f"is a file, not a folder: {rule.fix}"
        up = p
        while not up.exists() and up != up.parent:
            up = up.parent
        if not up.is_dir():
            return f"lies under {up}, a file, not a folder: {rule.fix}"
        if not os.access(up, os.W_OK | os.X_OK):
            return f"cannot be written ({up} is read-only): {rule.fix}"
        return None
    if not text or not p.exists():
        return f"does not exist: {rule.fix}"
    if rule.kind == "file" and not p.is_file():
        return f"is a folder, not a file: {rule.fix}"
    if rule.kind == "dir" and not p.is_dir():
        return f"is a file, not a folder: {rule.fix}"
    return None


def parse_text(rule: Rule, text: str) -> tuple[Any, str | None]:
    """``(value, problem)`` of a command-line string under ``rule``."""
    if rule.kind in NUMERIC:
        try:
            value = int(text) if rule.kind == "int" else float(text)
        except ValueError:
            return None, number_problem(rule, text)
        return value, number_problem(rule, value)
    if rule.kind in PATHS:
        return text, path_problem(rule, text)
    if rule.kind == "layers":
        if text == "all":
            return text, None
        try:
            return int(text), number_problem(I(0, rule.fix), int(text))
        except ValueError:
            return None, f"is not 'all' nor a block number: use {rule.fix}"
    if rule.kind == "device":
        ok = re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", text)
        return text, None if ok else f"is not a device: use {rule.fix}"
    raise ValueError(f"unknown rule kind {rule.kind!r}")


def option(name: str, to: Callable[[str], Any] | None = Path) -> Callable[[str], Any]:
    """An argparse ``type=`` that checks a value against ``RULES[name]``: numbers come back as
    int / float, paths as ``to(text)`` (``to=str`` keeps the string)."""
    rule = RULES[name]

    def convert(text: str):
        value, problem = parse_text(rule, text)
        if problem:
            raise argparse.ArgumentTypeError(f"{text!r} {problem}")
        return to(value) if rule.kind in PATHS and to is not None and value != "" else value

    convert.rule, convert.rule_name = rule, name  # type: ignore[attr-defined]
    convert.__name__ = name
    return convert


class Parser(argparse.ArgumentParser):
    """argparse whose refusals are one line (``error: argument --x: ...: see PROG --help``) and exit 2."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message}: see {self.prog} --help", file=sys.stderr)
        raise SystemExit(2)


# ---------------------------------------------------------------------------------------------
# config fields: the type hint, then the rule


def _describe(hint) -> str:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        return " or ".join(_describe(a) for a in args)
    if typing.get_origin(hint) is tuple:
        return f"a list of {len(args)}" if Ellipsis not in args else f"a list of {_describe(args[0]).split(' ', 1)[-1]}s"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}.get(hint, str(hint))


def _typed(hint, value) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return any(_typed(a, value) for a in args)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if Ellipsis in args:
            return all(_typed(args[0], v) for v in value)
        return len(value) == len(args) and all(_typed(a, v) for a, v in zip(args, value))
    if hint is float:
        return finite(value) or (isinstance(value, float) and not isinstance(value, bool))  # non-finite: the rule says why
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is type(None):
        return value is None
    return isinstance(value, hint) if isinstance(hint, type) else True


def hints(cls) -> dict[str, Any]:
    """The resolved type hint of every field of the dataclass ``cls``."""
    return typing.get_type_hints(cls)


def _json_or_text(text: str) -> Any:
    """``text`` read as JSON (a number, ``true``, ...), else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def field_problem(cls, key: str, value: Any, prefix: str = "") -> tuple[Any, str | None]:
    """``(value, problem)`` of ``key = value`` for the dataclass ``cls`` (``key`` a field of it,
    ``prefix`` its section, e.g. ``"model."``): the type hint first, then the field's rule.  A
    single value for a list field becomes a one-element list (``--set encoders=NAME``), and a bare
    comma-separated one a list of its items, each read as JSON where it parses (``--set
    encoders=fashion-ssl,fashion-supervised``, ``align_layers=2,4``; the official REPA code's
    ``--enc-type a,b``); an item that holds a comma itself needs the JSON form."""
    hint = hints(cls)[key]
    name = prefix + key
    rule = FIELD_RULES.get(name)
    if typing.get_origin(hint) is tuple and Ellipsis in typing.get_args(hint) and not isinstance(value, (list, tuple)):
        if isinstance(value, str) and "," in value:
            value = [_json_or_text(item.strip()) for item in value.split(",")]
        elif _typed(typing.get_args(hint)[0], value):
            value = [value]
    if not _typed(hint, value):
        fix = rule.fix if rule else f"e.g. {_example(cls, key)}"
        return value, f"{name} {value!r} is not {_describe(hint)}: use {fix}"
    if rule is None or value is None:
        return value, None
    items = value if isinstance(value, (list, tuple)) else [value]
    for v in items:
        problem = number_problem(rule, v) if rule.kind in NUMERIC else parse_text(rule, v)[1] if isinstance(v, str) else None
        if problem:
            return value, f"{name} {value!r} {problem}"
    return value, None


def _example(cls, key: str) -> str:
    f = {f.name: f for f in dataclasses.fields(cls)}[key]
    default = f.default if f.default is not dataclasses.MISSING else None
    return json.dumps(default if not isinstance(default, tuple) else list(default))


def config_problems(d: dict, cls, sections: dict[str, type], prefix: str = "") -> list[str]:
    """:func:`field_problem` for every known key of the config dict ``d`` (and of its sections)."""
    known = {f.name for f in dataclasses.fields(cls)}
    out = []
    for key, value in d.items():
        if key in sections and isinstance(value, dict):
            out += config_problems(value, sections[key], {}, f"{prefix}{key}.")
        elif key in known and key not in sections:
            d[key], problem = field_problem(cls, key, value, prefix)
            out += [problem] if problem else []
    return out
