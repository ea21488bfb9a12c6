"""Issue 22: bad input, mechanically.  The cases are generated from the parsers (argparse ``_actions``)
and the config dataclasses (``dataclasses.fields`` + type hints) and from the rules of
``train.run.rules.RULES``: for every option and every field, values of the wrong type, negative, zero
where it must be positive, NaN, inf, and for paths a missing path and a file where a folder is due
(or a folder where a file is).  Each case must end in a nonzero exit with one ``error:`` line that
names the option, no traceback, nothing on stdout and nothing written.

The options are parsed in this process with ``train.run.rules.Parser.parse_args`` wrapped so that an
accepted argv stops right after parsing (:class:`Accepted`): nothing trains or samples, and a value
that slips through is reported instead of run.  ``--set`` fields run ``repa-train --dry-run``.
A few subprocesses prove that a real user sees the same one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest

from train.run import rules
from train.run.config import DataConfig, ModelConfig, TrainConfig
from train.run.rules import INF, NUMERIC, RULES, TEXT, Parser

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


class Accepted(Exception):
    """The argv parsed: raised instead of running the command."""


def _mains():
    from probe.cli import main as probe_main
    from probe.demo import main as demo_main
    from train.run.cli import main_sample, main_train
    from train.data.datasets import encode_main
    from train.evaluation.evaluate import main as evaluate_main

    return dict(train=main_train, sample=main_sample, evaluate=evaluate_main, data=encode_main, probe=probe_main, demo=demo_main)


# entry point -> (main, argv before the positionals, {positional dest: value}, options that make a valid argv).
# Placeholders: CKPT (a file), DIR (a folder), TABLE (a .csv file), OUT (a new folder)
ENTRIES = {
    "repa-train": ("train", [], {}, ["--preset", "tiny", "--dry-run"]),
    "repa-sample": ("sample", [], {}, ["--ckpt", "CKPT", "--out", "OUT"]),
    "train.evaluation sample": ("evaluate", ["sample"], {}, ["--ckpt", "CKPT", "--out", "OUT"]),
    "train.evaluation fid": ("evaluate", ["fid"], {}, ["--samples", "DIR"]),
    "train.data encode": ("data", ["encode"], {}, ["--root", "DIR", "--out", "OUT"]),
    "train.data targets": ("data", ["targets"], {}, ["--cache", "DIR", "--encoders", "builtin-ssl"]),
    "repa-probe sweep": ("probe", ["sweep"], {}, ["--checkpoint", "CKPT"]),
    "repa-probe progress": ("probe", ["progress"], {}, ["--run", "DIR"]),
    "repa-probe compare": ("probe", ["compare"], {}, ["--run", "DIR"]),
    "repa-probe plot": ("probe", ["plot"], {}, ["--table", "TABLE"]),
    "repa-probe pca": ("probe", ["pca"], {}, ["--checkpoint", "CKPT"]),
    "repa-probe patch-align": ("probe", ["patch-align"], {"checkpoints": "CKPT"}, []),
    "repa-probe similarity": ("probe", ["similarity"], {"checkpoint_a": "CKPT", "checkpoint_b": "CKPT"}, []),
    "probe.demo": ("demo", [], {}, []),
}
SKIP_ACTIONS = (argparse._HelpAction, argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction,
                argparse._SubParsersAction)


@pytest.fixture
def places(tmp_path):
    (tmp_path / "dir").mkdir()
    (tmp_path / "ck.pt").write_bytes(b"not loaded: the battery stops after parsing")
    (tmp_path / "t.csv").write_text("run,step\n")
    return {"CKPT": str(tmp_path / "ck.pt"), "DIR": str(tmp_path / "dir"), "TABLE": str(tmp_path / "t.csv"),
            "OUT": str(tmp_path / "out")}


@pytest.fixture
def stop_after_parsing(monkeypatch):
    real = Parser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise Accepted(self, real(self, args, namespace))

    monkeypatch.setattr(Parser, "parse_args", parse_then_stop)


def files_under(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


def call(main, argv, capsys) -> tuple[object, str, str]:
    """``(exit status or the Accepted exception, stderr, stdout)`` of ``main(argv)`` in this process."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    except Accepted as e:
        code = e
    out = capsys.readouterr()
    return code, out.err.strip(), out.out.strip()


def refused(code, err: str, out: str, names: str) -> str | None:
    """Why this is not a proper refusal, or None."""
    if isinstance(code, Accepted) or code in (0, None):
        return "accepted"
    lines = err.splitlines()
    if code != 2 or not err.startswith("error:") or not 1 <= len(lines) <= 2 or "Traceback" in err:
        return f"exit {code}, stderr {err!r}"
    if names not in err:
        return f"does not name {names}: {err!r}"
    return f"wrote to stdout: {out!r}" if out else None


def bad_values(rule: rules.Rule, tmp: Path) -> dict[str, str]:
    """Values ``rule`` must refuse, by what is wrong with them; ``zero`` only where the rule admits no 0."""
    if rule.kind in NUMERIC:
        v = {"wrong type": "abc", "NaN": "nan", "inf": "inf", "-inf": "-inf", "negative": "-1", "overflow": "1e400"}
        if rule.kind == "int":
            v["fraction"] = "1.5"
        if not (rule.lo == 0 and rule.lo_ok):
            v["zero"] = "0"
        if rule.hi < INF:
            v["above the range"] = str(rule.hi + 1)
        if rule.lo > 1:
            v["below the range"] = str(int(rule.lo) - 1)
        return v
    (tmp / "a-file").write_text("x")
    missing, a_file, a_dir = str(tmp / "missing" / "x"), str(tmp / "a-file"), str(tmp)
    return {"file": {"missing": missing, "a folder": a_dir}, "dir": {"missing": missing, "a file": a_file},
            "path": {"missing": missing}, "weights": {"missing": missing}, "named": {"missing": f"A={missing}"},
            "out": {"a file": a_file, "under a file": a_file + "/run"},
            "layers": {"wrong type": "abc", "negative": "-1", "fraction": "1.5"},
            "device": {"wrong type": "gpu7"}}[rule.kind]


def actions_of(parser: argparse.ArgumentParser, sub: list[str]) -> list[argparse.Action]:
    for name in sub:  # train.evaluation.evaluate dispatches by hand: its captured parser is the command's own
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parser = subs[0].choices[name] if subs else parser
    return [a for a in parser._actions if not isinstance(a, SKIP_ACTIONS)]


# ----------------------------------------------------------------------------------------------
# every option of every entry point
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("entry", list(ENTRIES))
def test_every_option_refuses_nonsense_in_one_line(entry, places, stop_after_parsing, tmp_path, capsys):
    main_name, sub, positionals, options = ENTRIES[entry]
    main = _mains()[main_name]
    fill = lambda xs: [places.get(x, x) for x in xs]  # noqa: E731

    def argv(pos=None, extra=()):
        return [*sub, *fill(list({**positionals, **(pos or {})}.values())), *fill(options), *extra]

    code, err, _ = call(main, argv(), capsys)
    assert isinstance(code, Accepted), f"{entry}: the valid argv {argv()} was refused: {err}"
    parser = code.args[0]
    failures, cases = [], 0
    (tmp_path / "bad").mkdir()
    for action in actions_of(parser, sub):
        label = action.option_strings[0] if action.option_strings else (action.metavar or action.dest)
        rule = getattr(action.type, "rule", None)
        if action.choices is not None and rule is None:
            values = {"not a choice": "no-such-choice"}
        elif rule is not None:
            values = bad_values(rule, tmp_path / "bad")
        else:
            assert label in TEXT, f"{entry}: option {label} has no rule in train.run.rules.RULES, no choices and is not free TEXT"
            continue
        for what, value in values.items():
            before = files_under(tmp_path)
            if action.option_strings:
                args = argv(extra=[label, value])
            else:
                args = argv(pos={action.dest: value})
            code, err, out = call(main, args, capsys)
            cases += 1
            why = refused(code, err, out, label)
            if why is None and files_under(tmp_path) != before:
                why = "wrote files"
            if why:
                failures.append(f"{entry} {label} {value!r} ({what}): {why}")
        if rule is not None and rule.kind in NUMERIC and rule.lo == 0 and rule.lo_ok:
            assert rule.zero, f"{label}: its rule admits 0 without saying what 0 means"
            code, err, _ = call(main, argv(extra=[label, "0"]) if action.option_strings else argv(pos={action.dest: "0"}), capsys)
            if not isinstance(code, Accepted):
                failures.append(f"{entry} {label} 0 ({rule.zero}) is refused: {err}")
    assert not failures, "\n".join(failures)
    assert cases >= 1


# ----------------------------------------------------------------------------------------------
# every field of TrainConfig / ModelConfig / DataConfig, through repa-train --set
# ----------------------------------------------------------------------------------------------

def config_fields() -> list[tuple[str, object]]:
    """``(dotted name, type hint)`` of every leaf field of the three config dataclasses."""
    out = []
    for prefix, cls in (("", TrainConfig), ("model.", ModelConfig), ("data.", DataConfig)):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if hints[f.name] not in (ModelConfig, DataConfig):
                out.append((prefix + f.name, hints[f.name]))
    return out


def _scalar(hint):
    """(base type, is a list) of a field's hint: ``int | None`` -> (int, False), ``tuple[int, ...]`` -> (int, True)."""
    args = [a for a in typing.get_args(hint) if a is not type(None) and a is not Ellipsis]
    if typing.get_origin(hint) is tuple:
        return args[0], True
    return (args[0] if args else hint), False


def field_bad_values(name: str, hint, tmp: Path) -> dict[str, str]:
    base, is_list = _scalar(hint)
    rule = rules.FIELD_RULES.get(name)
    wrap = (lambda v: f"[{v}]") if is_list else (lambda v: v)  # noqa: E731
    if base in (int, float):
        assert rule is not None and rule.kind in NUMERIC, f"numeric field {name} has no rule in train.run.rules.RULES"
        v = {"wrong type": wrap('"abc"'), "a bool": wrap("true"), "NaN": wrap("NaN"), "inf": wrap("Infinity"),
             "-inf": wrap("-Infinity"), "negative": wrap("-1")}
        if base is int:
            v["fraction"] = wrap("1.5")
        if not (rule.lo == 0 and rule.lo_ok):
            v["zero"] = wrap("0")
        if rule.hi < INF:
            v["above the range"] = wrap(str(rule.hi + 1))
        if name == "betas":
            v = {k: f"[{x[1:-1]}, 0.9]" for k, x in v.items()} | {"one value": "[0.9]"}
        return v
    if base is bool:
        return {"wrong type": '"maybe"', "a number": "2"}
    assert base is str, (name, hint)
    v = {"wrong type": wrap("5"), "a list" if not is_list else "a dict": "[1]" if not is_list else '{"a": 1}'}
    if rule is not None:
        (tmp / "a-file").write_text("x")
        v.update({"missing": wrap(json.dumps(str(tmp / "missing")))})
        if rule.kind == "dir":
            v["a file"] = wrap(json.dumps(str(tmp / "a-file")))
    return v


def test_every_config_field_refuses_nonsense_in_one_line(tmp_path, capsys):
    from train.run.cli import main_train

    failures, cases = [], 0
    (tmp_path / "bad").mkdir()
    fields = config_fields()
    assert len(fields) > 80
    for name, hint in fields:
        for what, value in field_bad_values(name, hint, tmp_path / "bad").items():
            before = files_under(tmp_path)
            code, err, out = call(main_train, ["--preset", "tiny", "--dry-run", "--set", f"{name}={value}"], capsys)
            cases += 1
            why = refused(code, err, out, name)
            if why is None and files_under(tmp_path) != before:
                why = "wrote files"
            if why:
                failures.append(f"--set {name}={value} ({what}): {why}")
        rule = rules.FIELD_RULES.get(name)
        if rule is not None and rule.kind in NUMERIC and rule.lo == 0 and rule.lo_ok:
            assert rule.zero, f"{name}: its rule admits 0 without saying what 0 means"
            zero = "[0, 0]" if name == "betas" else "[0]" if _scalar(hint)[1] else "0"
            code, err, out = call(main_train, ["--preset", "tiny", "--dry-run", "--set", f"{name}={zero}"], capsys)
            if code != 0:
                failures.append(f"--set {name}={zero} ({rule.zero}) is refused: {err}")
    assert not failures, f"{len(failures)} of {cases}:\n" + "\n".join(failures)


def test_the_rule_table_is_sane():
    for name, rule in RULES.items():
        assert rule.fix, name
        if rule.kind in NUMERIC:
            assert rule.lo >= 0, f"{name}: negative values need a reason the battery can check"
            assert not rule.zero or (rule.lo == 0 and rule.lo_ok), f"{name}: says what 0 means but refuses it"
    config = {name for name, _ in config_fields()}
    assert set(rules.FIELD_RULES) <= config, set(rules.FIELD_RULES) - config


def test_a_value_given_twice_is_checked_both_times(capsys):
    from train.run.cli import main_train

    for argv, names in ((["--steps", "-1", "--steps", "2"], "--steps"), (["--set", "steps=2", "steps=-1"], "steps -1"),
                        (["--set", "lr=NaN", "--lr", "0.001"], "lr nan")):
        code, err, out = call(main_train, ["--preset", "tiny", "--dry-run", *argv], capsys)
        assert refused(code, err, out, names) is None, (argv, err)


# ----------------------------------------------------------------------------------------------
# what a real user sees: a console script in a fresh process
# ----------------------------------------------------------------------------------------------

def test_no_traceback_reaches_a_user(tmp_path):
    ck = tmp_path / "ck.pt"
    ck.write_bytes(b"x")
    cases = [
        ([sys.executable, "-m", "train", "--preset", "tiny", "--set", "steps=abc", "--steps", "2", "--out", str(tmp_path / "r")], "steps 'abc'"),
        ([sys.executable, "-m", "train.evaluation.evaluate", "sample", "--ckpt", str(ck), "--out", str(tmp_path / "s"), "--cfg-scale", "-3"], "--cfg-scale"),
        ([sys.executable, "-m", "probe", "sweep", "--checkpoint", str(ck), "--t", "nan"], "--t"),
    ]
    for cmd, names in cases:
        p = subprocess.run(cmd, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert p.returncode == 2 and p.stdout == "" and refused(2, p.stderr.strip(), "", names) is None, (cmd, p.stderr)
    assert files_under(tmp_path) == ["ck.pt"]
