"""The command line as a whole: every command and subcommand prints its help."""

import argparse

from alexnet.cli import COMMANDS, build_parser

# DESIGN.md's command line
NAMES = {"summary", "prepare", "verify", "train", "evaluate", "predict", "features", "neighbors", "visualize",
         "experiment", "export", "import-weights", "bench", "serve"}  # fmt: skip


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("alexnet",)):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def test_every_command_formats_its_help():
    found = {}
    for path, parser in _parsers(build_parser()):
        text = parser.format_help()  # a bare % in a help string raises here
        assert text.startswith("usage: " + " ".join(path)), path
        found[path] = text
    assert {p[1] for p in found if len(p) == 2} == NAMES and len(COMMANDS) == len(NAMES)  # every command is registered
    assert ("alexnet", "bench", "train") in found and ("alexnet", "bench", "step") in found
