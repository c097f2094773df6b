"""`keywatch disable|enable|events|policy test`. Listed in keywatch.extensions.CLI_EXTENSIONS.

disable and enable write the admin decision to the database with actor `operator:<user>`; a running
daemon reads it at its next cycle, and never undoes it on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
from datetime import UTC, datetime
from typing import Any

from keywatch.cli import add_config_arg

EXIT_OK, EXIT_ATTENTION, EXIT_USAGE = 0, 1, 2


def add_commands(sub: Any) -> None:
    p = sub.add_parser("disable", help="disable a key (operator decision; keywatch never re-enables it)")
    add_config_arg(p)
    p.add_argument("key", metavar="KEY", help="key name")
    p.add_argument("--reason", required=True, help="why (recorded in the audit trail)")
    p.add_argument(
        "--keywatch-only",
        action="store_true",
        help="do not deactivate the key at the provider, only take it out of keywatch's pools",
    )
    p.add_argument("--by", default=None, help="who (default: the current user)")
    p.set_defaults(handler=cmd_disable)

    p = sub.add_parser("enable", help="enable a key again (operator decision)")
    add_config_arg(p)
    p.add_argument("key", metavar="KEY", help="key name")
    p.add_argument("--reason", default="enabled by operator", help="why (recorded in the audit trail)")
    p.add_argument("--keywatch-only", action="store_true", help="do not re-activate the key at the provider")
    p.add_argument("--by", default=None, help="who (default: the current user)")
    p.set_defaults(handler=cmd_enable)

    p = sub.add_parser(
        "events", help="the audit trail: actions, outages, pool changes, with actor and reason"
    )
    add_config_arg(p)
    p.add_argument("--key", metavar="NAME", help="only events about this key")
    p.add_argument("--since", default="7d", metavar="DURATION", help="how far back (default 7d)")
    p.add_argument("--kind", action="append", metavar="KIND", help="only these kinds (repeatable)")
    p.add_argument("--limit", type=int, default=500, help="at most this many (newest kept; default 500)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=cmd_events)

    p = sub.add_parser("policy", help="policies")
    psub = p.add_subparsers(dest="policy_command", metavar="ACTION", required=True)
    t = psub.add_parser(
        "test", help="what the policies would do now, from the database's states; changes nothing"
    )
    add_config_arg(t)
    t.add_argument("--json", action="store_true", help="print JSON")
    t.set_defaults(handler=cmd_policy_test)


class _Usage(Exception):
    pass


def _fail(message: str) -> int:
    print(f"keywatch: {message}", file=sys.stderr)
    return EXIT_USAGE


def _open_store(config: Any, migrate: bool) -> Any:
    from keywatch.store.repo import Store, default_database_url, describe_url

    store = Store(config.daemon.database or default_database_url())
    try:
        if migrate:
            store.upgrade()
        else:
            store.ping()
    except Exception as exc:
        store.dispose()
        raise _Usage(f"cannot use the database {describe_url(store.url)}: {type(exc).__name__}") from None
    return store


def _operator(by: str | None) -> str:
    who = by or os.environ.get("SUDO_USER") or os.environ.get("USER") or getpass.getuser()
    return f"operator:{who}"


# -- disable / enable ---------------------------------------------------------------------------------------
def cmd_disable(args: argparse.Namespace) -> int:
    return _admin(args, "disable")


def cmd_enable(args: argparse.Namespace) -> int:
    return _admin(args, "enable")


def _admin(args: argparse.Namespace, what: str) -> int:
    from keywatch.redact import REGISTRY
    from keywatch.settings import load_inventory

    inventory = load_inventory(args.config)
    REGISTRY.replace(inventory.secrets())
    try:
        key = inventory.key(args.key)
    except KeyError as exc:
        return _fail(exc.args[0])
    try:
        store = _open_store(inventory.config, migrate=True)
    except _Usage as exc:
        return _fail(str(exc))
    try:
        out = asyncio.run(
            _admin_async(inventory, store, key, what, _operator(args.by), args.reason, not args.keywatch_only)
        )
    finally:
        store.dispose()
    print(f"{key.name}: {out.message}")
    return EXIT_OK if out.result in ("ok", "noop") else EXIT_ATTENTION


async def _admin_async(
    inventory: Any, store: Any, key: Any, what: str, actor: str, reason: str, at_provider: bool
) -> Any:
    from keywatch.domain import AdminState, KeyState
    from keywatch.engine.actions.base import ActionRequest
    from keywatch.engine.actions.disable import DisableAction
    from keywatch.engine.actions.enable import EnableAction
    from keywatch.engine.executor import Executor, Outcome
    from keywatch.providers.clients import AdapterSet, make_http_client

    states = await asyncio.to_thread(store.load_states)
    admin = (await asyncio.to_thread(store.admin_decisions)).get(key.name)
    state = states.get(key.name) or KeyState(
        key.name, key.provider, key.fingerprint, key.masked, labels=dict(key.labels)
    )
    if (
        admin is not None
        and admin.actor == actor
        and (
            (what == "disable" and admin.state is AdminState.DISABLED)
            or (what == "enable" and admin.state is AdminState.ACTIVE)
        )
    ):
        return Outcome("noop", f"already {what}d by {actor}")
    probe = inventory.config.probe
    http = make_http_client(4, probe.timeout)
    adapters = AdapterSet(
        http, inventory.accounts, timeout=probe.timeout, completion_model=probe.completion_model
    )

    async def record(event: Any) -> None:
        await asyncio.to_thread(store.record_events, [event])

    ex = Executor(adapters.get, store, record)
    try:
        config = (DisableAction if what == "disable" else EnableAction)(at_provider=at_provider)
        return await ex.run(ActionRequest(key, state, actor, reason, config))
    finally:
        await adapters.aclose()
        await http.aclose()


# -- events -------------------------------------------------------------------------------------------------
def cmd_events(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from keywatch.settings import load
    from keywatch.settings.durations import parse_duration

    try:
        since = datetime.now(UTC) - timedelta(seconds=parse_duration(args.since))
    except ValueError as exc:
        return _fail(f"--since: {exc}")
    config = load(args.config)
    try:
        store = _open_store(config, migrate=False)
    except _Usage as exc:
        return _fail(str(exc))
    try:
        events = store.events(args.key, since, args.limit)
    except Exception as exc:
        return _fail(
            f"cannot read events ({type(exc).__name__}); has `keywatch run` been started with this config?"
        )
    finally:
        store.dispose()
    if args.kind:
        events = [e for e in events if e.kind in args.kind]
    events.reverse()  # oldest first, as a story reads
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "at": e.at.isoformat(),
                        "kind": e.kind,
                        "key": e.key,
                        "actor": e.actor,
                        "message": e.message,
                        "data": e.data,
                    }
                    for e in events
                ],
                indent=2,
                default=str,
            )
        )
        return EXIT_OK
    if not events:
        print(f"no events since {since:%Y-%m-%d %H:%M} UTC" + (f" for {args.key}" if args.key else ""))
        return EXIT_OK
    rows = [[e.at.strftime("%Y-%m-%d %H:%M:%S"), e.kind, e.key or "-", e.actor, e.message] for e in events]
    _print_rows(["AT (UTC)", "KIND", "KEY", "ACTOR", "WHAT AND WHY"], rows)
    return EXIT_OK


def _print_rows(headers: list[str], rows: list[list[str]]) -> None:
    """Like keywatch.cli.print_table, but the last column is never cut: it carries the reason."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers[:-1])]
    for r in [headers, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1])


# -- policy test --------------------------------------------------------------------------------------------
def cmd_policy_test(args: argparse.Namespace) -> int:
    from keywatch.settings import load

    config = load(args.config)
    try:
        store = _open_store(config, migrate=False)
    except _Usage as exc:
        return _fail(str(exc))
    try:
        rows = plan(config, store, datetime.now(UTC))
    except Exception as exc:
        return _fail(
            f"cannot read key states ({type(exc).__name__}); has `keywatch run` been started with this "
            "config?"
        )
    finally:
        store.dispose()
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        print("no policy matches any key now")
        return EXIT_OK
    _print_rows(
        ["POLICY", "KEY", "ACTION", "WOULD", "BECAUSE"],
        [[r["policy"], r["key"], r["action"], r["would"], r["reason"]] for r in rows],
    )
    return EXIT_OK


def plan(config: Any, store: Any, now: datetime) -> list[dict[str, str]]:
    """What each policy would do with the stored states: the daemon's own cycle plan (engine.plan)."""
    from datetime import timedelta

    from keywatch.domain import ProbeResult
    from keywatch.engine.outage import detect
    from keywatch.engine.plan import (
        CycleInputs,
        key_views,
        ledger_from_events,
        plan_cycle,
        plan_rows,
        streaks_from_events,
    )
    from keywatch.engine.service import base_urls
    from keywatch.providers.base import ManagedKey

    states = store.load_states()
    admin = store.admin_decisions()
    enabled = [k for k in config.keys if k.enabled]
    names = [k.name for k in enabled]
    keys = [ManagedKey(k.name, k.provider, None, k.secret, base_url=k.base_url, labels=dict(k.labels)) for k in enabled]
    results = [
        ProbeResult(st.key, st.provider, st.health, st.last_probe_at or now, 0.0)
        for n in names
        if (st := states.get(n)) is not None and st.last_probe_at is not None
    ]
    found = detect(results, base_urls(keys), config.outage)
    try:
        ongoing = store.open_outages()
    except Exception:
        ongoing = {}
    suspended = frozenset(k for f in found.values() for k in f.keys)
    views = key_views(names, states, admin, suspended=suspended)
    recent = store.events(None, now - timedelta(days=7), 10000)
    ledger = ledger_from_events(e for e in recent if e.at >= now - timedelta(hours=1))
    streaks = streaks_from_events(recent, states)
    cycle = plan_cycle(CycleInputs(list(config.policies), config.safety, views, len(names), now, ledger, streaks))
    outages = [(p, "ongoing" if p in ongoing else "new", f.describe()) for p, f in sorted(found.items())]
    return plan_rows(cycle, outages)
