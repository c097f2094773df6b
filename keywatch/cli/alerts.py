"""`keywatch alert test` and `keywatch silence add|list|remove`.

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

from keywatch.cli.common import (
    EXIT_ATTENTION,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    add_command,
    add_group,
    new_store,
    print_table,
)

SINK_FAILED = "a sink did not take the test alert"


def add_commands(sub: Any) -> None:
    asub = add_group(sub, "alert", "alert sinks: send a test alert",
                     "Alert sinks (Slack, webhooks, Alertmanager, the console): send a test alert.",
                     attention=SINK_FAILED)
    t = add_command(asub, "test", cmd_alert_test,
                    "send a test alert to each sink (or one) now, bypassing the outbox", attention=SINK_FAILED)
    t.add_argument("--sink", metavar="NAME", help="only this sink")

    ssub = add_group(sub, "silence", "silence alerts for a while (stored in the database)",
                     "Silence alerts whose labels match, for a while; a running daemon reads the silences from "
                     "the database.")
    a = add_command(ssub, "add", cmd_silence_add, "silence alerts whose labels match")
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
    ls = add_command(ssub, "list", cmd_silence_list, "list silences in force (or all with --all)")
    ls.add_argument("--all", action="store_true", help="include expired silences")
    ls.add_argument("--json", action="store_true", help="print JSON")
    rm = add_command(ssub, "remove", cmd_silence_remove, "end a silence now")
    rm.add_argument("id", type=int)


# -- alert test ------------------------------------------------------------------------------------
TEST_IDENTITY = "keywatch_test"


def test_message(firing: bool = True, since: datetime | None = None) -> Any:
    """The test alert, or (firing=False) its resolve: the same identity and labels, so Alertmanager ends
    the very alert it was sent, and a new delivery id for each message."""
    from keywatch.domain import Alert, Severity
    from keywatch.notify.base import Message

    now = datetime.now(UTC)
    alert = Alert(
        TEST_IDENTITY,
        Severity.INFO,
        firing,
        "keywatch test alert" if firing else "keywatch test alert resolved",
        "This is a test from `keywatch alert test`; nothing is wrong."
        if firing
        else "`keywatch alert test` resolves its own test alert right after sending it.",
        now,
        labels={"alertname": "KeywatchTest"},
        fields={"action": "nothing (test)"},
    )
    return Message(0, [alert], {alert.identity: since or now}, test=True)


async def _send(sink: Any, message: Any) -> tuple[bool, str]:
    from keywatch.notify.base import SinkError

    try:
        d = await sink.send(message)
    except SinkError as exc:
        kind = "permanent: fix the sink's config" if exc.permanent else "transient: may work on a retry"
        return False, f"{exc} ({kind})"
    except Exception as exc:
        return False, type(exc).__name__
    return True, (f"HTTP {d.status}" if d.status else "ok") + (f" {d.detail}" if d.detail else "")


async def _test_sinks(sinks: list[Any], dashboard_url: str | None) -> list[tuple[Any, bool, str]]:
    """Send the test alert to each sink, then its resolve to each sink that took it (after the sink's
    min_interval, as Slack asks), so no test alert is left firing in Alertmanager."""
    from dataclasses import replace

    fired = replace(test_message(), dashboard_url=dashboard_url)
    since = fired.alerts[0].at
    out = []
    for sink in sinks:
        ok, detail = await _send(sink, fired)
        if ok:
            await asyncio.sleep(min(float(getattr(sink, "min_interval", 0.0) or 0.0), 2.0))
            resolve = replace(test_message(firing=False, since=since), dashboard_url=dashboard_url)
            rok, rdetail = await _send(sink, resolve)
            if rok:
                detail += "; resolved"
            else:
                ok, detail = False, f"{detail}; its resolve FAILED: {rdetail}"
        out.append((sink, ok, detail))
    return out


def cmd_alert_test(args: argparse.Namespace) -> int:
    """Send a test alert to each configured sink (or one) now, bypassing the outbox, and print
    each sink's own answer; nothing is left queued."""
    from keywatch.notify.registry import SinkClient, SinkConfigError, build_sinks
    from keywatch.notify.service import alerts_config
    from keywatch.redact import REGISTRY
    from keywatch.settings.loader import load

    config = load(args.config)
    alerts = alerts_config(config)
    if args.sink and args.sink not in {s.name for s in alerts.sinks}:
        known = ", ".join(s.name for s in alerts.sinks) or "none"
        raise CliError(f"{args.config}: no sink named {args.sink!r} in [[alerts.sinks]] (known: {known})")
    if not alerts.sinks:
        raise CliError(f"{args.config}: no [[alerts.sinks]] configured")

    async def run() -> list[tuple[Any, bool, str]]:
        http = SinkClient()
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
    return EXIT_OK if all(ok for _, ok, _ in results) else EXIT_ATTENTION


# -- silences --------------------------------------------------------------------------------------
def _db(config_path: str) -> Any:
    from sqlalchemy.orm import sessionmaker

    from keywatch.notify.outbox import AlertDB
    from keywatch.settings.loader import load

    store = new_store(load(config_path))
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
    """Silence the alerts whose labels all match, for the given duration."""
    from keywatch.durations import parse_duration

    try:
        matchers = parse_matchers(args.match)
        seconds = parse_duration(args.duration)
    except ValueError as exc:
        raise CliError(f"{exc}" if "--match" in str(exc) else f"--for: {exc}") from None
    if seconds <= 0:
        raise CliError("--for: must be more than 0")
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
    """List the silences in force (with --all, the expired ones too)."""
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
    """End a silence now, by its id (see `keywatch silence list`)."""
    db, store = _db(args.config)
    try:
        ok = db.expire_silence(args.id, datetime.now(UTC))
    finally:
        store.dispose()
    if not ok:
        raise CliError(f"no silence {args.id} in force (see `keywatch silence list --all`)")
    print(f"silence {args.id} ended")
    return EXIT_OK
