"""docs/cli.md describes every `keywatch` subcommand and every long option, walked from the real parser.

The parser is found through `keywatch.cli` (its parser builder), wherever the commands themselves are
defined, so new commands or options added by extensions fail here until the page documents them.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import keywatch.cli

PAGE = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
BUILDERS = ("build_parser", "make_parser", "get_parser", "parser")
# Options many commands share are described once, in this section of the page.
COMMON = "Common options"


def _modules() -> list:
    """keywatch.cli first; if it is a package, its submodules after it."""
    found = [keywatch.cli]
    for info in pkgutil.iter_modules(getattr(keywatch.cli, "__path__", [])):
        found.append(importlib.import_module(f"keywatch.cli.{info.name}"))
    return found


def keywatch_parser() -> argparse.ArgumentParser:
    for module in _modules():
        for name in BUILDERS:
            builder = getattr(module, name, None)
            if callable(builder):
                parser = builder()
                if isinstance(parser, argparse.ArgumentParser):
                    return parser
    pytest.fail(f"keywatch.cli has none of {BUILDERS} returning an argparse.ArgumentParser")


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """(command path, its parser) for the top level and every subcommand, depth first."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*path, name))


def is_group(parser: argparse.ArgumentParser) -> bool:
    return any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)


def long_options(parser: argparse.ArgumentParser) -> list[str]:
    return [
        opt
        for a in parser._actions
        if not isinstance(a, argparse._HelpAction)
        for opt in a.option_strings
        if opt.startswith("--")
    ]


def positionals(parser: argparse.ArgumentParser) -> list[str]:
    return [
        str(a.metavar or a.dest)
        for a in parser._actions
        if not a.option_strings and not isinstance(a, argparse._SubParsersAction)
    ]


def sections(text: str) -> dict[str, str]:
    """Heading `keywatch a b` (or the common options heading) -> its text up to the next heading."""
    out: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"^#+\s+`(keywatch[^`]*)`", line)
        if m:
            current = " ".join(m.group(1).split())
            out[current] = ""
        elif line.startswith("#"):
            current = COMMON if line.lstrip("#").strip() == COMMON else None
            if current:
                out[current] = ""
        elif current is not None:
            out[current] += line + "\n"
    return out


def leaf_commands() -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    return [(p, sub) for p, sub in commands(keywatch_parser()) if p and not is_group(sub)]


def test_the_walk_finds_the_commands_it_should():
    names = {" ".join(p) for p, _ in leaf_commands()}
    assert {"run", "check", "config validate", "config schema", "silence add"} <= names


def test_every_subcommand_has_a_section():
    found = sections(PAGE.read_text(encoding="utf-8"))
    missing = [f"keywatch {' '.join(p)}" for p, _ in leaf_commands() if f"keywatch {' '.join(p)}" not in found]
    assert not missing, f"docs/cli.md has no section (a heading `keywatch ...`) for: {missing}"


def test_every_long_option_and_argument_is_described_in_its_commands_section():
    found = sections(PAGE.read_text(encoding="utf-8"))
    missing = []
    for path, sub in leaf_commands():
        title = f"keywatch {' '.join(path)}"
        body = found.get(title, "") + found.get(COMMON, "")
        for opt in long_options(sub):
            if not re.search(rf"`{re.escape(opt)}[` =]", body):
                missing.append(f"{title} {opt}")
        for arg in positionals(sub):
            if not re.search(rf"`{re.escape(arg)}`", body, flags=re.I):
                missing.append(f"{title} {arg}")
    assert not missing, f"docs/cli.md does not describe: {missing}"


def test_top_level_options_are_described():
    text = PAGE.read_text(encoding="utf-8")
    top = keywatch_parser()
    missing = [opt for opt in long_options(top) if f"`{opt}" not in text]
    assert not missing, f"docs/cli.md does not describe: {missing}"


def test_every_subcommand_is_in_the_overview_table():
    text = PAGE.read_text(encoding="utf-8")
    rows = set(re.findall(r"^\| `(keywatch [^`]+)` \|", text, flags=re.M))
    missing = [f"keywatch {' '.join(p)}" for p, _ in leaf_commands() if f"keywatch {' '.join(p)}" not in rows]
    assert not missing, f"the command table of docs/cli.md lacks: {missing}"
