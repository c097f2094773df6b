"""`keywatch rotate` and `keywatch rotations`: start, abort and list key rotations."""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import UTC, datetime
from typing import Any

from keywatch.cli.common import EXIT_ATTENTION, EXIT_OK, CliError, add_command, open_store, print_table


def add_commands(sub: Any) -> None:
    p = add_command(sub, "rotate", cmd_rotate, "rotate a key now (or abort a rotation)",
                    attention="the rotation was refused or rolled back")
    p.add_argument("key", nargs="?", help="the key to rotate")
    p.add_argument("--dry-run", action="store_true", help="say what would happen; change nothing")
    p.add_argument("--now", action="store_true", help="rotate even if the key is not due yet")
    p.add_argument("--new-secret", metavar="REF",
                   help="assisted rotation: the new key a person created, as a secret reference (env:, file:, ...)")
    p.add_argument("--abort", metavar="ID", help="roll back the rotation ID (only before promote)")
    p = add_command(sub, "rotations", cmd_rotations, "list rotations in flight and finished")
    p.add_argument("--json", action="store_true", help="print JSON")


def _runtime(inventory: Any, store: Any, adapters: Any) -> Any:
    from prometheus_client import CollectorRegistry

    from keywatch.runtime import EventLog, Runtime
    from keywatch.state import StateTracker

    return Runtime(tracker=StateTracker(), registry=CollectorRegistry(), current_store=lambda: store,
                   current_inventory=lambda: inventory, adapter=adapters.get, current_scheduler=lambda: None,
                   events=EventLog(lambda: store))


def cmd_rotate(args: argparse.Namespace) -> int:
    """Rotate KEY now: create the new credential, publish it as pending to the key's `publish`
    destinations, verify it, promote it; the old key is retired after the grace period by the running
    daemon (which resumes every rotation in flight). Without --now a key that is not due yet is left alone.
    --abort ID rolls back a rotation that has not been promoted yet."""
    from keywatch.settings.loader import load_inventory

    if not args.key and not args.abort:
        raise CliError("rotate: name a key, or --abort ID")
    inventory = load_inventory(args.config)
    store = open_store(inventory.config, migrate=True)
    try:
        return asyncio.run(_rotate(args, inventory, store))
    finally:
        store.dispose()


async def _rotate(args: argparse.Namespace, inventory: Any, store: Any) -> int:
    from keywatch.providers.clients import AdapterSet, make_http_client
    from keywatch.rotation.config import rotate_every
    from keywatch.rotation.service import RotationService, settings_of
    from keywatch.rotation.store import RotationStore
    from keywatch.settings.secrets import resolve

    probe = inventory.config.probe
    http = make_http_client(4, probe.timeout, probe.max_body)
    adapters = AdapterSet(http, inventory.accounts, timeout=probe.timeout, completion_model=probe.completion_model)
    rt = _runtime(inventory, store, adapters)
    svc = RotationService(rt, RotationStore(store.engine))
    try:
        if args.abort:
            out = await svc.abort(args.abort)
            print(out.message)
            return EXIT_OK if out.ok else EXIT_ATTENTION
        try:
            key = inventory.key(args.key)
        except KeyError as exc:
            raise CliError(str(exc.args[0])) from None
        if not args.now and not args.new_secret:
            every = rotate_every(key, settings_of(inventory.config))
            since = await svc.age_of(key)
            if every is not None and since is not None and (datetime.now(UTC) - since).total_seconds() < every:
                due = datetime.fromtimestamp(since.timestamp() + every, UTC)
                print(f"{key.name}: not due until {due.isoformat(timespec='seconds')}; --now rotates it anyway")
                return EXIT_OK
        new_secret = None
        if args.new_secret:
            try:
                new_secret = resolve(args.new_secret, stores=getattr(inventory.config, "secret_stores", None))
            except Exception as exc:
                raise CliError(f"--new-secret {args.new_secret}: {exc}") from None
        started = await svc.request(key.name, actor="cli", reason="by hand", dry_run=args.dry_run,
                                    new_secret=new_secret)
        print(started.message)
        if not started.ok or started.rotation is None:
            return EXIT_OK if started.ok else EXIT_ATTENTION
        await svc.tasks[key.name]
        r = await asyncio.to_thread(svc.store.get, started.rotation.id)
        assert r is not None
        tail = f": {r.error}" if r.error else ""
        if r.state == "running":
            print(f"rotation {r.id[:8]}: promoted; the old key is retired after the grace period by the daemon{tail}")
        else:
            print(f"rotation {r.id[:8]}: {r.state} at {r.step}{tail}")
        return EXIT_ATTENTION if r.state == "rolled_back" else EXIT_OK
    finally:
        await adapters.aclose()
        await http.aclose()


def cmd_rotations(args: argparse.Namespace) -> int:
    """List rotations, newest first: in flight (with their step) and finished (done or rolled back), with
    the old and new credential ids; never a secret."""
    from keywatch.rotation.store import RotationStore
    from keywatch.settings.loader import load

    config = load(args.config)
    store = open_store(config, migrate=True)
    try:
        rows = RotationStore(store.engine).history()
    finally:
        store.dispose()
    if args.json:
        print(json.dumps([r.as_dict() for r in rows], indent=2))
        return EXIT_OK
    print_table(["ID", "KEY", "PROVIDER", "MODE", "STEP", "STATE", "OLD", "NEW", "STARTED", "ERROR"], [
        [r.id[:8], r.key, r.provider, r.mode, r.step, r.state, r.old_credential or "", r.new_credential or "",
         r.started_at.isoformat(timespec="seconds"), (r.error or "")[:80]] for r in rows
    ])
    return EXIT_OK
