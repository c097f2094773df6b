"""`keywatch usage`: who spent what, from the database the daemon fills.

Figures that a provider reports above keys (OpenAI projects without a key, Anthropic workspaces, AWS
accounts) are shown under their scope, e.g. `(workspace:wrk_1)`, never spread over keys.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from keywatch.cli.common import EXIT_OK, CliError, add_command, new_store, print_table

BY_CHOICES = "key, label:NAME, provider, model, account or scope"


def add_commands(sub: Any) -> None:
    p = add_command(sub, "usage", cmd_usage, "tokens and spend per key, label, provider or model, from the database")
    p.add_argument("--since", default="7d", metavar="WHEN",
                   help="how far back: a duration (7d, 12h) or a UTC date/time (2026-03-01) (default 7d)")
    p.add_argument("--by", default="key", metavar="WHAT", help=f"group by {BY_CHOICES} (default key)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON (amounts as exact decimal strings)")
    fmt.add_argument("--csv", action="store_true", help="print CSV")


def group_name(by: str, scope: str, provider: str, model: str, account: str, labels: dict[str, dict[str, str]]) -> str:
    if by == "provider":
        return provider
    if by == "model":
        return model or "(no model)"
    if by == "account":
        return account
    if by == "scope":
        return scope
    key = scope[4:] if scope.startswith("key:") else None
    if by == "key":
        return key if key is not None else f"({scope})"
    label = by.removeprefix("label:")
    if key is None:
        return f"({scope})"
    return labels.get(key, {}).get(label) or f"(no {label})"


def report(store: Any, since: datetime, by: str, labels: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
    cols = ("account", "provider", "scope", "currency") + (("model",) if by == "model" else ())
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for a in store.aggregate(since, None, cols):
        account, provider, scope, currency = a.group[:4]
        model = a.group[4] if by == "model" else ""
        name = group_name(by, scope, provider, model, account, labels)
        g = groups.setdefault((name, currency), {"group": name, "currency": currency, "input_tokens": 0,
                                                 "output_tokens": 0, "cached_tokens": 0, "requests": 0,
                                                 "cost": Decimal(0)})
        g["input_tokens"] += a.input_tokens
        g["output_tokens"] += a.output_tokens
        g["cached_tokens"] += a.cached_tokens
        g["requests"] += a.requests
        g["cost"] += a.cost
    return sorted(groups.values(), key=lambda g: (-g["cost"], -(g["input_tokens"] + g["output_tokens"]), g["group"]))


def parse_since(text: str, now: datetime) -> datetime:
    from keywatch.durations import parse_duration

    try:
        return now - timedelta(seconds=parse_duration(text))
    except ValueError:
        pass
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration (7d, 12h) nor a date (2026-03-01)") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def cmd_usage(args: argparse.Namespace) -> int:
    """Tokens, requests and spend per key, label, provider, model, account or scope, from the usage the
    daemon collected into the database; spend reported above keys stays under its scope."""
    from keywatch.settings.loader import load
    from keywatch.store.repo import describe_url
    from keywatch.usage.store import UsageStore

    by = args.by
    if by not in ("key", "provider", "model", "account", "scope") and not (
        by.startswith("label:") and len(by) > len("label:")
    ):
        raise CliError(f"--by: {by!r} is not one of {BY_CHOICES}")
    try:
        since = parse_since(args.since, datetime.now(UTC))
    except ValueError as exc:
        raise CliError(f"--since: {exc}") from None
    config = load(args.config)
    labels = {k.name: dict(k.labels) for k in config.keys}
    store = new_store(config, create=False)
    try:
        rows = report(UsageStore(store.engine), since, by, labels)
    except Exception as exc:
        raise CliError(f"cannot read usage from {describe_url(store.url)} ({type(exc).__name__}); has `keywatch run` "
                     "been started with this config?") from None
    finally:
        store.dispose()
    header = ["group", "currency", "input_tokens", "output_tokens", "cached_tokens", "requests", "cost"]
    if args.json:
        print(json.dumps({"since": since.isoformat(), "by": by,
                          "rows": [{**r, "cost": str(r["cost"])} for r in rows]}, indent=2))
        return EXIT_OK
    if args.csv:
        w = csv.writer(sys.stdout)
        w.writerow(header)
        for r in rows:
            w.writerow([r[h] if h != "cost" else str(r["cost"]) for h in header])
        return EXIT_OK
    from keywatch.usage.money import usd_text

    if not rows:
        print(f"no usage recorded since {since:%Y-%m-%d %H:%M} UTC")
        return EXIT_OK
    table = [[r["group"], r["currency"], f"{r['input_tokens']:,}", f"{r['output_tokens']:,}",
              f"{r['cached_tokens']:,}", f"{r['requests']:,}", usd_text(r["cost"])] for r in rows]
    print_table([by.upper(), "CUR", "INPUT", "OUTPUT", "CACHED", "REQUESTS", "COST"], table)
    for currency in sorted({r["currency"] for r in rows}):
        total = sum((r["cost"] for r in rows if r["currency"] == currency), Decimal(0))
        print(f"total {currency}: {usd_text(total)} since {since:%Y-%m-%d %H:%M} UTC")
    return EXIT_OK
