"""The command line as a whole: every command module is a command and prints its help, README's
table names each, and the arguments several commands share (cli/_args.py) are spelt and checked
one way in all of them. The commands are found from the parser, never listed here."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alexnet.checkpoint import save_checkpoint
from alexnet.cli import build_parser, main
from alexnet.cli._args import UsageError, device, non_negative_int, port, positive_float, positive_int
from alexnet.models import create_model
from alexnet.preprocess import Preprocess

ROOT = Path(__file__).resolve().parents[1]
BAD = {positive_int: "0", non_negative_int: "-1", positive_float: "0", port: "70000", device: "nope"}


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def _leaves() -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every (sub)command that runs something: (its words after `alexnet`, its parser)."""
    return [(path, p) for path, p in _parsers(build_parser())
            if path and not any(isinstance(a, argparse._SubParsersAction) for a in p._actions)]  # fmt: skip


def _value(action: argparse.Action) -> str:
    if action.choices:
        return str(next(iter(action.choices)))
    return "1" if action.type in (positive_int, non_negative_int, positive_float, port) else "x"


def _required(p: argparse.ArgumentParser) -> list[str]:
    """A minimal command line for `p` besides the checkpoint: each required argument with a good value."""
    argv, rest = [], []
    group_firsts = [g._group_actions[0] for g in p._mutually_exclusive_groups if g.required]
    for a in p._actions:
        if a.dest == "checkpoint" or isinstance(a, argparse._HelpAction):
            continue
        if not a.option_strings and a.nargs in (None, "+"):
            argv.append(_value(a))
        elif a.option_strings and (a.required or a in group_firsts):
            rest += [a.option_strings[0], _value(a)]
    return argv + rest


def _checkpoint_flag(p: argparse.ArgumentParser) -> bool:
    return "--checkpoint" in p._option_string_actions


def _checkpoint_positional(p: argparse.ArgumentParser) -> bool:
    return any(a.dest == "checkpoint" and not a.option_strings for a in p._actions)


CKPT_COMMANDS = [(path, p) for path, p in _leaves() if _checkpoint_flag(p)]
OPTIONAL = {("neighbors",), ("visualize", "neighbors")}  # the model of --query images, by default the features' own


def test_every_command_module_is_a_command_with_help():
    modules = {f.stem.replace("_", "-") for f in (ROOT / "src" / "alexnet" / "cli").glob("*.py") if not f.stem.startswith("_")}
    found = {}
    for path, parser in _parsers(build_parser()):
        text = parser.format_help()  # a bare % in a help string raises here
        assert text.startswith("usage: " + " ".join(("alexnet", *path))), path
        found[path] = text
    assert {p[0] for p in found if len(p) == 1} == modules
    assert ("bench", "train") in found and ("bench", "step") in found


def test_readme_command_table_names_every_command():
    text = (ROOT / "README.md").read_text()
    table = text[text.index("## Command line"):].split("\n\n")[1]
    listed = set(re.findall(r"^\| `alexnet ([a-z-]+)", table, re.M))
    assert listed == {path[0] for path, _ in _parsers(build_parser()) if len(path) == 1}


def test_every_command_that_loads_a_checkpoint_takes_the_flag():
    assert {path for path, _ in CKPT_COMMANDS} >= {("evaluate",), ("export",), ("features",), ("neighbors",),
                                                  ("predict",), ("serve",), ("visualize", "kernels"),
                                                  ("visualize", "neighbors"), ("visualize", "predictions")}  # fmt: skip


@pytest.mark.parametrize("path,parser", CKPT_COMMANDS, ids=lambda v: " ".join(v) if isinstance(v, tuple) else "")
def test_every_command_takes_checkpoint_as_a_flag_and_the_old_positional_where_there_was_one(path, parser):
    rest = _required(parser)
    assert build_parser().parse_args([*path, *rest, "--checkpoint", "runs/a"]).checkpoint == "runs/a"
    # serve and export took it positionally (scripts keep working); probe SOURCE reads as train --init SOURCE
    if _checkpoint_positional(parser):
        assert path in {("serve",), ("export",), ("probe",)}
        assert build_parser().parse_args([*path, "runs/a", *rest]).checkpoint == "runs/a"
        assert build_parser().parse_args([*path, "runs/a", *rest, "--checkpoint", "runs/a"]).checkpoint == "runs/a"
        with pytest.raises(UsageError, match="two checkpoints"):
            build_parser().parse_args([*path, "runs/a", *rest, "--checkpoint", "runs/b"])
    if path in OPTIONAL:
        assert build_parser().parse_args([*path, *rest]).checkpoint is None
    else:
        with pytest.raises(UsageError, match="required: --checkpoint CKPT"):
            build_parser().parse_args([*path, *rest])


def test_device_defaults_to_auto_except_in_bench():
    """auto: the CPU on a machine without CUDA, the GPU on one with it; bench times the CPU unless told."""
    defaults = {path: p._option_string_actions["--device"].default for path, p in _leaves()
                if "--device" in p._option_string_actions}  # fmt: skip
    assert {("evaluate",), ("features",), ("predict",), ("serve",), ("bench", "train"), ("bench", "infer")} <= set(defaults)
    assert all(v == ("cpu" if path[0] == "bench" else "auto") for path, v in defaults.items()), defaults
    assert all(p._option_string_actions["--device"].type is device for _, p in _leaves() if "--device" in p._option_string_actions)


@pytest.mark.parametrize("argv,message", [
    (["predict", "--checkpoint", "nowhere.pt", "a.png", "--topk", "0"], "--topk must be >= 1, got 0"),
    (["predict", "--checkpoint", "nowhere.pt", "a.png", "--device", "gpu"], "--device must be auto, cpu, cuda, cuda:N or mps, got 'gpu'"),
    (["serve", "nowhere.pt", "--device", "cuda:x"], "--device must be auto"),
    (["serve", "nowhere.pt", "--port", "65536"], "--port must be between 0 and 65535, got 65536"),
    (["evaluate", "--checkpoint", "nowhere.pt", "--data", "d", "--batch-size", "-3"], "--batch-size must be >= 1, got -3"),
    (["neighbors", "--features", "f", "--query", "a.png", "-k", "zero"], "-k must be an integer >= 1, got 'zero'"),
    (["experiment", "lrn", "--data", "d", "--jobs", "0"], "--jobs must be >= 1, got 0"),
    (["serve"], "the following arguments are required: --checkpoint CKPT"),
])  # fmt: skip
def test_bad_values_are_one_line_before_anything_loads(argv, message, capsys):
    assert main(argv) == 2  # the checkpoint does not exist: had the command run, it would say so instead
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"alexnet {argv[0]}: error: {message}") and len(err.splitlines()) == 1, err


def _bad_cases():
    for path, p in _leaves():
        for a in p._actions:
            if a.option_strings and a.type in BAD:
                yield path, p, a.option_strings[0], BAD[a.type]


@pytest.mark.parametrize("path,parser,flag,bad", list(_bad_cases()),
                         ids=lambda v: " ".join(v) if isinstance(v, tuple) else v if isinstance(v, str) else "")  # fmt: skip
def test_a_bad_shared_value_is_one_line_and_exit_2(path, parser, flag, bad, capsys):
    ckpt = ["--checkpoint", "runs/a"] if _checkpoint_flag(parser) else []
    assert main([*path, *_required(parser), *ckpt, flag, bad]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"alexnet {' '.join(path)}: error: {flag} must be ") and len(err.splitlines()) == 1, err


def test_shared_types_accept_their_edges():
    assert positive_int("1") == 1 and non_negative_int("0") == 0 and port("0") == 0 and port("65535") == 65535
    assert device("auto") == "auto" and device("cuda:1") == "cuda:1" and device("cpu") == "cpu"
    for fn, text in ((positive_int, "1.5"), (positive_int, "x"), (port, "-1"), (device, "gpu"), (positive_float, "nan"),
                     (positive_float, "inf")):
        with pytest.raises(argparse.ArgumentTypeError):
            fn(text)


def test_export_reads_the_same_checkpoint_by_either_spelling(tmp_path, capsys):
    torch.manual_seed(0)
    model = create_model("alexnet-small", num_classes=3, in_chans=1, widths=[8, 8, 8, 8, 8], fc=[16, 16])
    ckpt = save_checkpoint(tmp_path / "m.pt", model, preprocess=Preprocess.raw(1, 28, 28))
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert main(["export", str(ckpt), "--format", "safetensors", "--out", str(a)]) == 0
    assert main(["export", "--checkpoint", str(ckpt), "--format", "safetensors", "--out", str(b)]) == 0
    ta, tb = load_file(a), load_file(b)
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_overrides_may_follow_flags():
    from alexnet.cli import parse

    args = parse(build_parser(), ["train", "epochs=2", "--data", "d", "--init", "runs/a", "optim.lr=0.1", "--out", "o"])
    assert args.overrides == ["epochs=2", "optim.lr=0.1"] and args.init == "runs/a"
    with pytest.raises(UsageError, match="unrecognized arguments: --bogus"):
        parse(build_parser(), ["train", "epochs=2", "--data", "d", "--bogus", "optim.lr=0.1"])
