"""`keywatch policy test`: what the policies would do now, from the database's states; changes nothing.

`plan` walks the daemon's decision step with the same pure functions (detect, decide, apply_limits); it is
to give way to the engine's own planning function once there is one.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

from keywatch.cli.common import EXIT_OK, CliError, add_command, add_group, open_store, print_table


def add_commands(sub: Any) -> None:
    psub = add_group(sub, "policy", "policies", "Policies: the rules that disable, enable or hook keys.")
    t = add_command(psub, "test", cmd_policy_test,
                    "what the policies would do now, from the database's states; changes nothing")
    t.add_argument("--json", action="store_true", help="print JSON")


def cmd_policy_test(args: argparse.Namespace) -> int:
    """Show what each policy would do now with the key states in the database, outages and safety limits
    included; nothing is changed."""
    from keywatch.settings.loader import load

    config = load(args.config)
    store = open_store(config, migrate=False)
    try:
        rows = plan(config, store, datetime.now(UTC))
    except Exception as exc:
        raise CliError(
            f"cannot read key states ({type(exc).__name__}); has `keywatch run` been started with this "
            "config?"
        ) from None
    finally:
        store.dispose()
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        print("no policy matches any key now")
        return EXIT_OK
    print_table(
        ["POLICY", "KEY", "ACTION", "WOULD", "BECAUSE"],
        [[r["policy"], r["key"], r["action"], r["would"], r["reason"]] for r in rows],
        cut_last=False,
    )
    return EXIT_OK


def plan(config: Any, store: Any, now: datetime) -> list[dict[str, str]]:
    """What each policy would do with the stored states: the daemon's own cycle plan (engine.plan)."""
    from datetime import timedelta

    from keywatch.domain import ManagedKey, ProbeResult
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
