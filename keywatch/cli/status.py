"""`keywatch status`: the state the daemon recorded in the database."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

from keywatch.cli.common import (
    EXIT_ATTENTION,
    EXIT_OK,
    UNHEALTHY,
    CliError,
    add_command,
    detail_text,
    new_store,
    print_table,
)


def add_commands(sub: Any) -> None:
    p = add_command(sub, "status", cmd_status, "show the state the daemon recorded in the database",
                    attention=UNHEALTHY)
    p.add_argument("--json", action="store_true", help="print JSON")


def cmd_status(args: argparse.Namespace) -> int:
    """Show each key's health, admin state and last probe as the daemon recorded them in the database;
    nothing is probed."""
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from keywatch.settings.loader import load
    from keywatch.store.repo import describe_url

    config = load(args.config)
    store = new_store(config, create=False)
    try:
        states = store.load_states()
    except (OperationalError, ProgrammingError) as exc:
        raise CliError(
            f"no keywatch state in {describe_url(store.url)} ({type(exc.orig).__name__}); "
            "has `keywatch run` been started with this config?"
        ) from None
    configured = [k.name for k in config.keys]
    names = [n for n in configured if n in states] + sorted(set(states) - set(configured))
    now = datetime.now(UTC)
    if args.json:
        out = []
        for n in names:
            st = states[n]
            out.append({
                "key": st.key, "provider": st.provider, "health": str(st.health),
                "admin_state": str(st.admin_state), "health_since": _iso(st.health_since),
                "last_probe_at": _iso(st.last_probe_at), "consecutive": st.consecutive,
                "http_status": st.http_status, "error_code": st.error_code, "error_message": st.error_message,
                "latency_ms": st.latency_ms, "fingerprint": st.fingerprint, "masked": st.masked,
                "compromised": st.compromised, "compromise_reason": st.compromise_reason,
                "labels": st.labels, "in_config": n in configured,
            })
        print(json.dumps(out, indent=2))
    else:
        rows = []
        for n in names:
            st = states[n]
            rows.append([
                st.key, st.provider, str(st.health) + (" COMPROMISED" if st.compromised else ""),
                _ago(st.health_since, now), _ago(st.last_probe_at, now), str(st.admin_state), st.masked,
                detail_text(st.error_code, st.error_message),
            ])
        print_table(["KEY", "PROVIDER", "HEALTH", "SINCE", "LAST PROBE", "ADMIN", "KEY", "DETAIL"], rows)
        fleet = _fleet_line(store, config)
        if fleet:
            print(fleet)
    bad = [n for n in names if not states[n].health.is_up or states[n].compromised]
    return EXIT_OK if not bad else EXIT_ATTENTION


def _fleet_line(store: Any, config: Any) -> str | None:
    """Who leads and who probes, when instances share a PostgreSQL database (None alone, or on SQLite)."""
    if store.engine.dialect.name != "postgresql":
        return None
    from keywatch.cluster.store import ClusterStore

    cluster = ClusterStore(store.engine)
    try:
        members = cluster.members()
        leader = cluster.leader()
    except Exception:
        return None  # a database from before the cluster tables
    if not members:
        return None
    timeout = config.cluster.takeover_timeout
    shown = ", ".join(f"{m.instance} ({m.age_s:.1f}s ago{'' if m.age_s < timeout else ', gone'})" for m in members)
    live = {m.instance for m in members if m.age_s < timeout}
    lead = f"leader {leader.instance} (token {leader.token})" if leader.instance in live else "no live leader"
    return f"cluster: {lead}; members {shown}"


def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat() if dt else None


def _ago(dt: datetime | None, now: datetime) -> str:
    if dt is None:
        return "never"
    from keywatch.durations import format_duration

    return format_duration(max(0.0, (now - dt).total_seconds())) + " ago"
