"""`keywatch config validate|schema`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from keywatch.cli.common import EXIT_OK, add_command, add_group


def add_commands(sub: Any) -> None:
    csub = add_group(sub, "config", "validate the config or print its JSON Schema",
                     "Validate the config file, every secret reference resolved, or print its JSON Schema.")
    add_command(csub, "validate", cmd_config_validate, "check the config file and resolve every secret reference",
                log_level=None)
    add_command(csub, "schema", cmd_config_schema, "print the config's JSON Schema", config=False, log_level=None)


def cmd_config_schema(args: argparse.Namespace) -> int:
    """Print the config's JSON Schema (for editors and CI checks)."""
    from keywatch.settings.schema import json_schema

    print(json.dumps(json_schema(), indent=2))
    return EXIT_OK


def cmd_config_validate(args: argparse.Namespace) -> int:
    """Check the config file and resolve every secret reference; no secret is printed."""
    from keywatch.settings.loader import ConfigError, load, load_inventory

    try:
        leaks = _leak_problems(load(args.config))
    except ConfigError:
        leaks = []  # the file does not validate: load_inventory says why
    try:
        inventory = load_inventory(args.config)
    except ConfigError as exc:
        raise ConfigError(exc.source, exc.problems + leaks) from None
    if leaks:
        raise ConfigError(inventory.source, leaks)
    for w in inventory.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"{inventory.source}: ok ({len(inventory.keys)} keys, {len(inventory.accounts)} accounts)")
    return EXIT_OK


def _leak_problems(config: Any) -> list[str]:
    """The `[leaks]` receivers' secret references, resolved as the daemon resolves them at start."""
    from keywatch.leaks.config import reference_problem, secret_references
    from keywatch.settings.secrets import SecretError, resolve

    problems = []
    for where, ref in secret_references(config.leaks):
        try:
            resolve(ref, allow_literal=config.daemon.allow_literal_secrets, stores=config.secret_stores)
        except SecretError as exc:
            problems.append(reference_problem(where, ref, exc))
    return problems
