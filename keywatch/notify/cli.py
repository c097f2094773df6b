"""`keywatch alert test` and `keywatch silence add|list|remove`. Listed in keywatch.extensions.CLI_EXTENSIONS.

`alert test` bypasses the outbox on purpose: it answers "does this sink work right now?" with the sink's own
answer, and leaves nothing queued behind.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from keywatch.cli import add_config_arg

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_commands(sub: Any) -> None:
    p = sub.add_parser("alert", help="alert sinks: send a test alert")
    asub = p.add_subparsers(dest="alert_command", metavar="ACTION", required=True)
    t = asub.add_parser("test", help="send a test alert to each sink (or one) now, bypassing the outbox")
    add_config_arg(t)
    t.add_argument("--sink", metavar="NAME", help="only this sink")
    t.set_defaults(handler=cmd_alert_test)

    p = sub.add_parser("silence", help="silence alerts for a while (stored in the database)")
    ssub = p.add_subparsers(dest="silence_command", metavar="ACTION", required=True)
    a = ssub.add_parser("add", help="silence alerts whose labels match")
    add_config_arg(a)
    a.add_argument(
        "--match",
        action="append",
        required=True,
        metavar="LABEL=VALUE",
        help="key=NAME, provider=NAME, severity=..., identity=..., or a key label (repeatable; all must "
        "match)",
    )
    a.add_argument("--for", dest="duration", required=True, metavar="DURATION", help="e.g. 30m, 2h, 1d")
    a.add_argument("--reason", required=True, help="why (shown in `silence list`)")
    a.add_argument("--by", default=None, help="who (default: the current user)")
    a.set_defaults(handler=cmd_silence_add)
    ls = ssub.add_parser("list", help="list silences in force (or all with --all)")
    add_config_arg(ls)
    ls.add_argument("--all", action="store_true", help="include expired silences")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(handler=cmd_silence_list)
    rm = ssub.add_parser("remove", help="end a silence now")
    add_config_arg(rm)
    rm.add_argument("id", type=int)
    rm.set_defaults(handler=cmd_silence_remove)


def _err(text: str) -> int:
    print(f"keywatch: {text}", file=sys.stderr)
    return EXIT_USAGE


# -- alert test ------------------------------------------------------------------------------------
def test_message() -> Any:
    from keywatch.domain import Alert, Severity
    from keywatch.notify.base import Message

    now = datetime.now(UTC)
    alert = Alert(
        "keywatch_test",
        Severity.INFO,
        True,
        "keywatch test alert",
        "This is a test from `keywatch alert test`; nothing is wrong.",
        now,
        fields={"action": "nothing (test)"},
    )
    return Message(0, [alert], {alert.identity: now}, test=True)


async def _test_sinks(sinks: list[Any], dashboard_url: str | None) -> list[tuple[Any, bool, str]]:
    from dataclasses import replace

    from keywatch.notify.base import SinkError

    message = replace(test_message(), dashboard_url=dashboard_url)
    out = []
    for sink in sinks:
        try:
            d = await sink.send(message)
        except SinkError as exc:
            kind = "permanent: fix the sink's config" if exc.permanent else "transient: may work on a retry"
            out.append((sink, False, f"{exc} ({kind})"))
        except Exception as exc:
            out.append((sink, False, type(exc).__name__))
        else:
            out.append(
                (
                    sink,
                    True,
                    (f"HTTP {d.status}" if d.status else "ok") + (f" {d.detail}" if d.detail else ""),
                )
            )
    return out


def cmd_alert_test(args: argparse.Namespace) -> int:
    from keywatch.notify.registry import SinkConfigError, build_sinks, make_http_client
    from keywatch.notify.service import alerts_config
    from keywatch.redact import REGISTRY
    from keywatch.settings import load

    config = load(args.config)
    alerts = alerts_config(config)
    if args.sink and args.sink not in {s.name for s in alerts.sinks}:
        known = ", ".join(s.name for s in alerts.sinks) or "none"
        return _err(f"{args.config}: no sink named {args.sink!r} in [[alerts.sinks]] (known: {known})")
    if not alerts.sinks:
        return _err(f"{args.config}: no [[alerts.sinks]] configured")

    async def run() -> list[tuple[Any, bool, str]]:
        http = make_http_client()
        try:
            sinks, secrets = build_sinks(alerts, http, allow_literal=config.daemon.allow_literal_secrets)
            REGISTRY.add(secrets)
            chosen = [s for s in sinks if not args.sink or s.name == args.sink]
            return await _test_sinks(chosen, alerts.dashboard_url)
        finally:
            await http.aclose()

    try:
        results = asyncio.run(run())
    except SinkConfigError as exc:
        for p in exc.problems:
            print(f"{args.config}: {p}", file=sys.stderr)
        return EXIT_USAGE
    for sink, ok, detail in results:
        print(
            f"{sink.name} ({sink.type}, {sink.describe()}): "
            f"{'ok' if ok else 'FAILED'}: {REGISTRY.redact(detail)}"
        )
    return EXIT_OK if all(ok for _, ok, _ in results) else EXIT_FAILED


# -- silences --------------------------------------------------------------------------------------
def _db(config_path: str) -> Any:
    from sqlalchemy.orm import sessionmaker

    from keywatch.notify.outbox import AlertDB
    from keywatch.settings import load
    from keywatch.store.repo import Store, default_database_url

    config = load(config_path)
    store = Store(config.daemon.database or default_database_url())
    store.upgrade()
    return AlertDB(sessionmaker(store.engine, expire_on_commit=False)), store


def parse_matchers(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ValueError(f"--match {item!r}: expected LABEL=VALUE, e.g. key=openai-prod")
        out[name.strip()] = value.strip()
    return out


def cmd_silence_add(args: argparse.Namespace) -> int:
    from keywatch.settings.durations import parse_duration

    try:
        matchers = parse_matchers(args.match)
        seconds = parse_duration(args.duration)
    except ValueError as exc:
        return _err(f"{exc}" if "--match" in str(exc) else f"--for: {exc}")
    if seconds <= 0:
        return _err("--for: must be more than 0")
    db, store = _db(args.config)
    try:
        now = datetime.now(UTC)
        ends = now + timedelta(seconds=seconds)
        sid = db.add_silence(matchers, now, ends, args.by or getpass.getuser(), args.reason)
    finally:
        store.dispose()
    print(f"silence {sid}: {_fmt_matchers(matchers)} until {ends:%Y-%m-%d %H:%M:%S} UTC")
    return EXIT_OK


def _fmt_matchers(m: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in m.items())


def cmd_silence_list(args: argparse.Namespace) -> int:
    from keywatch.cli import print_table

    db, store = _db(args.config)
    try:
        now = datetime.now(UTC)
        silences = db.silences(None if args.all else now)
    finally:
        store.dispose()
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "id": s.id,
                        "match": s.matchers,
                        "starts_at": s.starts_at.isoformat(),
                        "ends_at": s.ends_at.isoformat(),
                        "created_by": s.created_by,
                        "reason": s.reason,
                        "active": s.active(now),
                    }
                    for s in silences
                ],
                indent=2,
            )
        )
        return EXIT_OK
    rows = [
        [
            str(s.id),
            _fmt_matchers(s.matchers),
            f"{s.ends_at:%Y-%m-%d %H:%M} UTC",
            "active" if s.active(now) else "expired",
            s.created_by,
            s.reason,
        ]
        for s in silences
    ]
    print_table(["ID", "MATCH", "UNTIL", "STATE", "BY", "REASON"], rows)
    return EXIT_OK


def cmd_silence_remove(args: argparse.Namespace) -> int:
    db, store = _db(args.config)
    try:
        ok = db.expire_silence(args.id, datetime.now(UTC))
    finally:
        store.dispose()
    if not ok:
        return _err(f"no silence {args.id} in force (see `keywatch silence list --all`)")
    print(f"silence {args.id} ended")
    return EXIT_OK
