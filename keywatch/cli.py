"""The `keywatch` command: the daemon, one-shot checks, status and operator actions.

Exit codes: 0 all good, 1 something needs attention (a key is not healthy), 2 a config or usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from keywatch import __version__, aio

DEFAULT_CONFIG = os.environ.get("KEYWATCH_CONFIG", "/etc/keywatch/keywatch.toml")
EXIT_OK, EXIT_ATTENTION, EXIT_USAGE = 0, 1, 2


class CliError(Exception):
    """A problem the user can fix; printed without a traceback, exit 2."""


def add_config_arg(p: argparse.ArgumentParser) -> None:
    """`-c/--config`, the same on every subcommand (extensions use it too)."""
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG,
                   help=f"config file (default: $KEYWATCH_CONFIG or {DEFAULT_CONFIG})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keywatch",
        description="Watch the health, spend and safety of LLM provider API keys.",
        epilog="Exit codes: 0 ok, 1 a key needs attention, 2 config or usage error.",
    )
    parser.add_argument("--version", action="version", version=f"keywatch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="run the daemon (probe on a schedule, serve /metrics)")
    add_config_arg(p)

    p = sub.add_parser("check", help="probe keys once and print their health")
    add_config_arg(p)
    p.add_argument("--key", action="append", metavar="NAME", help="only this key (repeatable)")
    p.add_argument("--json", action="store_true", help="print JSON (a list of objects)")

    p = sub.add_parser("status", help="show the state the daemon recorded in the database")
    add_config_arg(p)
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("config", help="validate the config or print its JSON Schema")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    v = csub.add_parser("validate", help="check the config file and resolve every secret reference")
    add_config_arg(v)
    csub.add_parser("schema", help="print the config's JSON Schema")

    p = sub.add_parser("db", help="database maintenance")
    dsub = p.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    u = dsub.add_parser("upgrade", help="apply pending migrations (the daemon also does this at start)")
    add_config_arg(u)

    p = sub.add_parser("demo", help="run the daemon against the built-in provider simulator")
    p.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                   help="stop after this many seconds (default: until Ctrl-C)")
    p.add_argument("--interval", default="5s", help="probe interval (default 5s)")
    p.add_argument("--listen", default="127.0.0.1:9464", help="where /metrics is served (default 127.0.0.1:9464)")

    import importlib

    from keywatch.extensions import CLI_EXTENSIONS

    for name in CLI_EXTENSIONS:
        importlib.import_module(name).add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    from keywatch.settings import ConfigError

    try:
        return _dispatch(args)
    except ConfigError as exc:
        for p in exc.problems:
            print(f"{exc.source}: {p}", file=sys.stderr)
        return EXIT_USAGE
    except CliError as exc:
        print(f"keywatch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    from keywatch import logging as kwlog

    if getattr(args, "handler", None) is not None:
        kwlog.setup("auto", "warning")
        return args.handler(args)
    if args.command == "run":
        from keywatch.daemon import Daemon
        from keywatch.settings import load

        config = load(args.config)
        kwlog.setup(config.daemon.log_format, config.daemon.log_level)
        return aio.run(Daemon(args.config).run())
    if args.command == "check":
        kwlog.setup("auto", "warning")
        return cmd_check(args)
    if args.command == "status":
        kwlog.setup("auto", "warning")
        return cmd_status(args)
    if args.command == "config":
        return cmd_config(args)
    if args.command == "db":
        kwlog.setup("auto", "info")
        return cmd_db(args)
    if args.command == "demo":
        from keywatch.demo import run_demo

        return run_demo(duration=args.duration, interval=args.interval, listen=args.listen)
    raise CliError(f"unknown command {args.command}")


# -- check ----------------------------------------------------------------------------------------------
def result_json(r: Any, fingerprint: str) -> dict[str, Any]:
    rl = r.ratelimit.as_dict() if r.ratelimit else dict.fromkeys(
        ("requests_remaining", "tokens_remaining", "requests_reset_seconds", "tokens_reset_seconds"))
    return {
        "key": r.key,
        "provider": r.provider,
        "health": str(r.health),
        "http_status": r.http_status,
        "error_code": r.error_code,
        "error_message": r.error_message,
        "latency_ms": r.latency_ms,
        "fingerprint": fingerprint,
        "ratelimit": rl,
        "compromised": r.compromised,
        "compromise_reason": r.compromise_reason,
    }


async def probe_inventory(inventory: Any, names: list[str] | None, progress: bool) -> list[Any]:
    from keywatch.engine.prober import Prober
    from keywatch.providers.clients import AdapterSet, make_http_client
    from keywatch.redact import REGISTRY

    REGISTRY.replace(inventory.secrets())
    keys = [inventory.key(n) for n in names] if names else inventory.keys
    probe = inventory.config.probe
    http = make_http_client(probe.concurrency, probe.timeout)
    adapters = AdapterSet(http, inventory.accounts, timeout=probe.timeout, completion_model=probe.completion_model)
    prober = Prober(adapters, concurrency=probe.concurrency, timeout=probe.timeout)
    done = 0

    def on_result(_: Any) -> None:
        nonlocal done
        done += 1
        if progress:
            print(f"\rprobed {done}/{len(keys)}", end="", file=sys.stderr, flush=True)

    try:
        results = await prober.run(keys, on_result)
    finally:
        if progress:
            print("\r" + " " * 30 + "\r", end="", file=sys.stderr, flush=True)
        await adapters.aclose()
        await http.aclose()
    order = {k.name: i for i, k in enumerate(keys)}
    return sorted(results, key=lambda r: order[r.key])


def cmd_check(args: argparse.Namespace) -> int:
    from keywatch.settings import load_inventory

    inventory = load_inventory(args.config)
    for w in inventory.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if args.key:
        try:
            [inventory.key(n) for n in args.key]
        except KeyError as exc:
            raise CliError(exc.args[0]) from None
    if not inventory.keys:
        raise CliError(f"{inventory.source}: no enabled keys to check")
    progress = sys.stderr.isatty() and len(args.key or inventory.keys) > 1
    results = aio.run(probe_inventory(inventory, args.key, progress))
    fps = {k.name: k.fingerprint for k in inventory.keys}
    if args.json:
        print(json.dumps([result_json(r, fps[r.key]) for r in results], indent=2))
    else:
        rows = [
            [r.key, r.provider, str(r.health) + (" COMPROMISED" if r.compromised else ""),
             str(r.http_status or "-"), f"{r.latency_ms:.0f}", _rl_text(r.ratelimit),
             (r.error_code or "") + (f": {r.error_message}" if r.error_message else "")]
            for r in results
        ]
        print_table(["KEY", "PROVIDER", "HEALTH", "HTTP", "MS", "RATE LIMIT LEFT", "DETAIL"], rows)
    ok = all(r.health.is_up and not r.compromised for r in results)
    return EXIT_OK if ok else EXIT_ATTENTION


def _rl_text(rl: Any) -> str:
    if rl is None:
        return "-"
    parts = []
    if rl.requests_remaining is not None:
        parts.append(f"{rl.requests_remaining} req")
    if rl.tokens_remaining is not None:
        parts.append(f"{rl.tokens_remaining} tok")
    return ", ".join(parts) or "-"


def print_table(headers: list[str], rows: list[list[str]], out: Any = None) -> None:
    out = out or sys.stdout
    last_width = 70
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    widths[-1] = min(widths[-1], last_width)

    def line(cells: list[str]) -> str:
        cells = [*cells[:-1], cells[-1] if len(cells[-1]) <= last_width else cells[-1][: last_width - 1] + "…"]
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    print(line(headers), file=out)
    for r in rows:
        print(line(r), file=out)


# -- status -----------------------------------------------------------------------------------------------
def _store_for(config_path: str) -> Any:
    from keywatch.settings import load
    from keywatch.store.repo import Store, default_database_url

    config = load(config_path)
    return config, Store(config.daemon.database or default_database_url())


def cmd_status(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from keywatch.store.repo import describe_url

    config, store = _store_for(args.config)
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
                (st.error_code or "") + (f": {st.error_message}" if st.error_message else ""),
            ])
        print_table(["KEY", "PROVIDER", "HEALTH", "SINCE", "LAST PROBE", "ADMIN", "KEY", "DETAIL"], rows)
    bad = [n for n in names if not states[n].health.is_up or states[n].compromised]
    return EXIT_OK if not bad else EXIT_ATTENTION


def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat() if dt else None


def _ago(dt: datetime | None, now: datetime) -> str:
    if dt is None:
        return "never"
    from keywatch.settings.durations import format_duration

    return format_duration(max(0.0, (now - dt).total_seconds())) + " ago"


# -- config, db ---------------------------------------------------------------------------------------------
def cmd_config(args: argparse.Namespace) -> int:
    if args.config_command == "schema":
        from keywatch.settings.schema import json_schema

        print(json.dumps(json_schema(), indent=2))
        return EXIT_OK
    from keywatch.settings import load_inventory

    inventory = load_inventory(args.config)
    for w in inventory.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"{inventory.source}: ok ({len(inventory.keys)} keys, {len(inventory.accounts)} accounts)")
    return EXIT_OK


def cmd_db(args: argparse.Namespace) -> int:
    from keywatch.store.repo import describe_url

    _, store = _store_for(args.config)
    try:
        applied = store.upgrade()
    except Exception as exc:
        raise CliError(f"cannot migrate {describe_url(store.url)}: {type(exc).__name__}") from None
    print(f"{describe_url(store.url)}: " + (f"applied {', '.join(applied)}" if applied else "up to date"))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
