"""`keywatch disable|enable|events`: operator decisions about keys, and the audit trail.

disable and enable write the admin decision to the database with actor `operator:<user>`; a running
daemon reads it at its next cycle, and never undoes it on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
from datetime import UTC, datetime
from typing import Any

from keywatch.cli.common import (
    EXIT_ATTENTION,
    EXIT_OK,
    CliError,
    add_command,
    open_store,
    print_table,
)

ADMIN_FAILED = "the change failed, was partial or a dry run (the message says)"


def add_commands(sub: Any) -> None:
    _add_admin(sub, "disable", cmd_disable, "disable a key (operator decision; keywatch never re-enables it)",
               {"required": True}, "do not deactivate the key at the provider, only take it out of keywatch's pools")
    p = _add_admin(sub, "enable", cmd_enable, "enable a key again (operator decision)",
                   {"default": "enabled by operator"}, "do not re-activate the key at the provider")
    p.add_argument("--compromised-ok", action="store_true",
                   help="enable a key marked compromised (a leak report or the provider said it is exposed); "
                   "clears the mark, recording who (--by) and why (--reason)")

    p = add_command(sub, "events", cmd_events, "the audit trail: actions, outages, pool changes, with actor and reason")
    p.add_argument("--key", metavar="NAME", help="only events about this key")
    p.add_argument("--since", default="7d", metavar="DURATION", help="how far back (default 7d)")
    p.add_argument("--kind", action="append", metavar="KIND", help="only these kinds (repeatable)")
    p.add_argument("--limit", type=int, default=500, help="at most this many (newest kept; default 500)")
    p.add_argument("--json", action="store_true", help="print JSON")


def _add_admin(sub: Any, name: str, handler: Any, help: str, reason: dict[str, Any], keywatch_only: str) -> Any:
    """`disable` and `enable`: the same arguments; `reason` is required, or has a default."""
    p = add_command(sub, name, handler, help, attention=ADMIN_FAILED)
    p.add_argument("key", metavar="KEY", help="key name")
    p.add_argument("--reason", **reason, help="why (recorded in the audit trail)")
    p.add_argument("--keywatch-only", action="store_true", help=keywatch_only)
    p.add_argument("--by", default=None, help="who (default: the current user)")
    return p


def _operator(by: str | None) -> str:
    who = by or os.environ.get("SUDO_USER") or os.environ.get("USER") or getpass.getuser()
    return f"operator:{who}"


# -- disable / enable ---------------------------------------------------------------------------------------
def cmd_disable(args: argparse.Namespace) -> int:
    """Disable a key: deactivate it at the provider (unless --keywatch-only) and take it out of keywatch's
    pools. An operator's decision: keywatch never re-enables it on its own."""
    return _admin(args, "disable")


def cmd_enable(args: argparse.Namespace) -> int:
    """Enable a key again: re-activate it at the provider (unless --keywatch-only) and let keywatch's pools
    use it. An operator's decision, recorded in the audit trail."""
    return _admin(args, "enable")


def _admin(args: argparse.Namespace, what: str) -> int:
    from keywatch.redact import REGISTRY
    from keywatch.settings.loader import load_inventory

    inventory = load_inventory(args.config)
    REGISTRY.replace(inventory.secrets())
    try:
        key = inventory.key(args.key)
    except KeyError as exc:
        raise CliError(exc.args[0]) from None
    store = open_store(inventory.config, migrate=True)
    try:
        if what == "enable":
            _compromise_check(store, key.name, _operator(args.by), args.reason, args.compromised_ok)
        out = asyncio.run(
            _admin_async(inventory, store, key, what, _operator(args.by), args.reason, not args.keywatch_only)
        )
    finally:
        store.dispose()
    print(f"{key.name}: {out.message}")
    if what == "enable" and out.result == "failed" and not args.keywatch_only:
        print(f"{key.name}: to enable it on keywatch's side only (back into its pools; the provider is not "
              f"asked): keywatch enable --keywatch-only -c {args.config} {key.name}")
    return EXIT_OK if out.result in ("ok", "noop") else EXIT_ATTENTION


def _compromise_check(store: Any, name: str, actor: str, reason: str, ok: bool) -> None:
    """A compromised key comes back only with --compromised-ok, which clears the mark with who and why."""
    from keywatch.domain import Event
    from keywatch.leaks.store import LeakStore

    leaks = LeakStore(store.engine)
    marked = leaks.compromised().get(name)
    state = store.load_states().get(name)
    flagged = state is not None and state.compromised
    if marked is None and not flagged:
        return
    source = f"{marked.source} at {marked.location}" if marked else (state.compromise_reason or "the provider")
    if not ok:
        raise CliError(f"{name} is compromised (reported by {source}); nothing automatic re-enables it. If it is "
                       f"safe again (rotated, or a false positive), run: keywatch enable {name} --compromised-ok "
                       '--reason "why"')
    now = datetime.now(UTC)
    if marked is not None:
        leaks.clear(name, actor, reason, now)
    store.record_events([Event(now, "compromise_cleared", name, actor,
                               f"{name}: compromise ({source}) cleared by {actor}: {reason}",
                               {"source": marked.source if marked else "provider", "reason": reason})])
    if flagged and marked is None:
        print(f"{name}: the provider still flags it ({state.compromise_reason}); remove that first or the next "
              "probe marks it compromised again")


async def _admin_async(
    inventory: Any, store: Any, key: Any, what: str, actor: str, reason: str, at_provider: bool
) -> Any:
    from keywatch.domain import AdminState, KeyState
    from keywatch.engine.actions.disable import DisableAction
    from keywatch.engine.actions.enable import EnableAction
    from keywatch.engine.executor import Executor
    from keywatch.engine.model import ActionRequest, Outcome
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
    http = make_http_client(4, probe.timeout, probe.max_body)
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
    """Print the audit trail, oldest first: actions, outages and pool changes, each with its actor and
    reason."""
    from datetime import timedelta

    from keywatch.durations import parse_duration
    from keywatch.settings.loader import load

    try:
        since = datetime.now(UTC) - timedelta(seconds=parse_duration(args.since))
    except ValueError as exc:
        raise CliError(f"--since: {exc}") from None
    config = load(args.config)
    store = open_store(config, migrate=False)
    try:
        events = store.events(args.key, since, args.limit)
    except Exception as exc:
        raise CliError(
            f"cannot read events ({type(exc).__name__}); has `keywatch run` been started with this config?"
        ) from None
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
    print_table(["AT (UTC)", "KIND", "KEY", "ACTOR", "WHAT AND WHY"], rows, cut_last=False)
    return EXIT_OK
