"""Every command's --help has a description and lists the exit codes it can return, from the one table."""

from __future__ import annotations

import argparse
import re

import pytest

from keywatch.cli import build_parser, main
from keywatch.cli.common import EXIT_ATTENTION, EXIT_CODES, EXIT_INTERRUPTED, EXIT_OK, EXIT_PIPE, EXIT_USAGE

ALWAYS = {EXIT_OK, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_PIPE}
WITH_ATTENTION = ALWAYS | {EXIT_ATTENTION}

HELP_EXIT_CODES = [
    # (argv before --help, the exit codes its help must list)
    (("run",), ALWAYS),
    (("sim",), ALWAYS),
    (("demo",), ALWAYS),
    (("check",), WITH_ATTENTION),
    (("status",), WITH_ATTENTION),
    (("config",), ALWAYS),
    (("config", "validate"), ALWAYS),
    (("config", "schema"), ALWAYS),
    (("db",), ALWAYS),
    (("db", "upgrade"), ALWAYS),
    (("db", "copy"), ALWAYS),
    (("alert",), WITH_ATTENTION),
    (("alert", "test"), WITH_ATTENTION),
    (("silence",), ALWAYS),
    (("silence", "add"), ALWAYS),
    (("silence", "list"), ALWAYS),
    (("silence", "remove"), ALWAYS),
    (("disable",), WITH_ATTENTION),
    (("enable",), WITH_ATTENTION),
    (("events",), ALWAYS),
    (("policy",), ALWAYS),
    (("policy", "test"), ALWAYS),
    (("usage",), ALWAYS),
    (("doctor",), WITH_ATTENTION),
    (("rotate",), WITH_ATTENTION),
    (("rotations",), ALWAYS),
    (("scan",), WITH_ATTENTION),
]


def _help(argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize(("argv", "codes"), HELP_EXIT_CODES, ids=[" ".join(a) for a, _ in HELP_EXIT_CODES])
def test_help_lists_exit_codes(argv: tuple[str, ...], codes: set[int], capsys: pytest.CaptureFixture[str]) -> None:
    out = _help(argv, capsys)
    assert out.startswith(f"usage: keywatch {' '.join(argv)} ")
    description = out.split("\n\n")[1]
    assert description.strip() and not description.startswith(("options:", "positional arguments:"))
    block = out[out.index("\nexit codes:\n"):]
    listed = {int(m.group(1)): m.group(2) for m in re.finditer(r"^  (\d+) +(.+)$", block, re.MULTILINE)}
    assert set(listed) == codes
    for code in codes:
        assert listed[code].startswith(EXIT_CODES[code])
    if EXIT_ATTENTION in codes:  # what "needs attention" means is said for each command
        assert listed[EXIT_ATTENTION].startswith(EXIT_CODES[EXIT_ATTENTION] + ": ")


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    out = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                out |= {(*prefix, name)} | _commands(child, (*prefix, name))
    return out


def test_every_command_is_in_the_table() -> None:
    assert _commands(build_parser()) == {argv for argv, _ in HELP_EXIT_CODES}


def test_top_level_help_lists_every_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    out = _help((), capsys)
    for code, meaning in EXIT_CODES.items():
        assert re.search(rf"^  {code} +{re.escape(meaning)}", out, re.MULTILINE)
