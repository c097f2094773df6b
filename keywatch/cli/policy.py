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
    from keywatch.settings import load

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
    """What each policy would do with the stored states, through the same pure functions as the daemon."""
    from datetime import timedelta

    from keywatch.domain import AdminState, ProbeResult
    from keywatch.engine.executor import read_admin
    from keywatch.engine.outage import detect, load_open
    from keywatch.engine.policy import (
        COUNTED_ACTIONS,
        KeyView,
        Ledger,
        apply_limits,
        decide,
        effective_policies,
        is_operator,
        needed,
    )
    from keywatch.engine.service import base_urls
    from keywatch.providers.base import ManagedKey

    states = store.load_states()
    admin = read_admin(store)
    names = [k.name for k in config.keys if k.enabled]
    keys = [
        ManagedKey(k.name, k.provider, None, k.secret, base_url=k.base_url, labels=dict(k.labels))
        for k in config.keys
        if k.enabled
    ]
    results = [
        ProbeResult(st.key, st.provider, st.health, st.last_probe_at or now, 0.0)
        for n in names
        if (st := states.get(n)) is not None and st.last_probe_at is not None
    ]
    found = detect(results, base_urls(keys), config.outage)
    try:
        ongoing = load_open(store)
    except Exception:
        ongoing = {}
    suspended: set[str] = set()
    for f in found.values():
        suspended |= f.keys
    views = {}
    for n in names:
        st = states.get(n)
        if st is None:
            continue
        info = admin.get(n)
        views[n] = KeyView(
            st,
            in_outage=n in suspended,
            admin_actor=info.actor if info else None,
            admin_changed_at=info.changed_at if info else None,
        )
    policies = effective_policies(list(config.policies), config.safety)
    decisions, _ = decide(policies, views, now, dry_run=config.safety.dry_run)
    ledger = Ledger()
    for e in store.events(None, now - timedelta(hours=1), 10000):
        if e.kind == "action_done" and e.data.get("action") in COUNTED_ACTIONS and not is_operator(e.actor):
            ledger.add(e.actor, e.at)
    for q in ledger.times.values():
        q.__init__(sorted(q))  # type: ignore[misc]
    todo = [
        d for d in decisions if d.kind in COUNTED_ACTIONS and (d.kind == "hook" or needed(d, views[d.key]))
    ]
    limits = {
        p.name: p.max_actions_per_hour or config.safety.max_actions_per_policy_per_hour for p in policies
    }
    disabled = sum(
        1
        for v in views.values()
        if v.state.admin_state is AdminState.DISABLED and not is_operator(v.admin_actor)
    )
    _, blocked = apply_limits(
        todo,
        ledger=ledger,
        now=now,
        policy_limits=limits,
        fleet_size=len(names),
        disabled_by_keywatch=disabled,
        max_disabled_percent=config.safety.max_disabled_percent,
    )
    why_blocked = {id(b.decision): b.why for b in blocked}
    todo_ids = {id(d) for d in todo}
    rows = []
    for provider, f in sorted(found.items()):
        state = "ongoing" if provider in ongoing else "new"
        rows.append(
            {
                "policy": "(outage)",
                "key": "-",
                "action": "suspend",
                "would": f"{state} outage of {provider}",
                "reason": f.describe(),
            }
        )
    for d in decisions:
        if d.dry_run:
            would = "dry run: record only"
        elif id(d) in why_blocked:
            would = "BLOCKED: " + why_blocked[id(d)]
        elif d.kind in COUNTED_ACTIONS and id(d) not in todo_ids:
            would = "nothing (already done or a person's decision)"
        else:
            would = "do"
        rows.append({"policy": d.policy, "key": d.key, "action": d.kind, "would": would, "reason": d.reason})
    return rows
