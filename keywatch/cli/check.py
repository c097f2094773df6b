"""`keywatch check`: probe keys once, now, and print their health."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from keywatch.cli.common import EXIT_ATTENTION, EXIT_OK, UNHEALTHY, CliError, add_command, detail_text, print_table


def add_commands(sub: Any) -> None:
    p = add_command(sub, "check", cmd_check, "probe keys once and print their health", attention=UNHEALTHY)
    p.add_argument("--key", action="append", metavar="NAME", help="only this key (repeatable)")
    p.add_argument("--json", action="store_true", help="print JSON (a list of objects)")


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
    http = make_http_client(probe.concurrency, probe.timeout, probe.max_body)
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
    """Probe the configured keys once, now, and print their health; the daemon's state is neither read
    nor changed."""
    from keywatch import aio
    from keywatch.settings.loader import load_inventory

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
             detail_text(r.error_code, r.error_message)]
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
