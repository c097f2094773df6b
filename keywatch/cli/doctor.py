"""`keywatch doctor`: the troubleshooter for one key or all of them, each finding with a suggested fix.

Checks, per key: the secret reference resolves; DNS, TCP and TLS to the base URL (with timings); one probe
and its classification with the reason; the management credential tried with read-only calls (the key's
record, and the credential list where the key rotates), the write calls the configured policies need
explained, never tried; clock skew against the provider's Date
header; the key's recent history from the store (read only: a missing SQLite file is not created).
Nothing is changed anywhere. Secrets never appear: only fingerprints and masked forms.
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from keywatch.cli.common import EXIT_ATTENTION, EXIT_OK, CliError, add_command

ATTENTION = "a check failed or needs attention"
SKEW_WARN_S = 30.0
NET_TIMEOUT_S = 5.0

FIXES = {
    "invalid": "the provider rejects the key itself: rotate it (create a new key, update the secret, reload)",
    "forbidden": "the key authenticates but may not do this: check its project/scope, model access or region",
    "quota_exhausted": "add credit or raise the spending limit, or move traffic to another key",
    "rate_limited": "the key works but is throttled: lower probe.concurrency or spread traffic over keys",
    "provider_error": "the provider failed (5xx): check its status page; keywatch does not blame the key",
    "unreachable": "no answer: check base_url, DNS, proxy (HTTPS_PROXY) and the egress firewall",
}


@dataclass
class Finding:
    key: str
    check: str
    status: str  # ok, warn, fail, skip
    detail: str
    fix: str = ""
    ms: float | None = None


def add_commands(sub: Any) -> None:
    p = add_command(sub, "doctor", cmd_doctor,
                    "diagnose keys: secret, network, probe, permissions, clock, history", attention=ATTENTION)
    p.add_argument("--key", metavar="NAME", help="only this key")
    p.add_argument("--json", action="store_true", help="print JSON (a list of findings)")


def _base_url(k: Any) -> str | None:
    from keywatch.providers import registry

    if k.base_url:
        return str(k.base_url)
    if getattr(k, "endpoint", None):
        return str(k.endpoint)
    try:
        return registry.info(k.provider).default_base_url
    except Exception:
        return None


def _network(name: str, url: str) -> tuple[list[Finding], bool]:
    out: list[Finding] = []
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    t0 = time.perf_counter()
    try:
        addrs = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        out.append(Finding(name, "dns", "fail", f"{host}: {exc.strerror or type(exc).__name__}",
                           "check the host name in base_url and the resolver (/etc/resolv.conf)"))
        return out, False
    out.append(Finding(name, "dns", "ok", f"{host} -> {addrs[0][4][0]}", ms=_ms(t0)))
    t0 = time.perf_counter()
    try:
        sock = socket.create_connection((host, port), timeout=NET_TIMEOUT_S)
    except OSError as exc:
        kind = "refused" if isinstance(exc, ConnectionRefusedError) else exc.strerror or type(exc).__name__
        out.append(Finding(name, "tcp", "fail", f"{host}:{port}: {kind}",
                           "nothing answers there: check base_url's port, a proxy or the egress firewall",
                           ms=_ms(t0)))
        return out, False
    out.append(Finding(name, "tcp", "ok", f"{host}:{port} connected", ms=_ms(t0)))
    with sock:
        if parts.scheme != "https":
            out.append(Finding(name, "tls", "skip", "plain http: no TLS",
                               "use https for a real provider; plain http is for local test servers"))
            return out, True
        t0 = time.perf_counter()
        try:
            with ssl.create_default_context().wrap_socket(sock, server_hostname=host) as tls:
                cert = tls.getpeercert() or {}
                version = tls.version()
        except (ssl.SSLError, OSError) as exc:
            out.append(Finding(name, "tls", "fail", f"{host}: {type(exc).__name__}: {exc}"[:200],
                               "a TLS-intercepting proxy needs its CA in SSL_CERT_FILE; else check the host name",
                               ms=_ms(t0)))
            return out, False
    expires = cert.get("notAfter", "?")
    out.append(Finding(name, "tls", "ok", f"{version}, certificate valid until {expires}", ms=_ms(t0)))
    return out, True


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 1)


def _clock(name: str, url: str) -> Finding:
    import httpx2

    try:
        r = httpx2.get(url, timeout=NET_TIMEOUT_S, follow_redirects=False)
    except Exception as exc:
        return Finding(name, "clock", "skip", f"no answer to read a Date header from ({type(exc).__name__})")
    date = r.headers.get("date")
    if not date:
        return Finding(name, "clock", "skip", "the provider's answer has no Date header")
    try:
        theirs = parsedate_to_datetime(date)
    except (TypeError, ValueError):
        return Finding(name, "clock", "skip", "the provider's Date header is unreadable")
    skew = (datetime.now(UTC) - theirs).total_seconds()
    if abs(skew) > SKEW_WARN_S:
        return Finding(name, "clock", "warn", f"this machine is {skew:+.0f} s off the provider's clock",
                       "sync the clock (timedatectl set-ntp true / chrony): signed requests and rate-limit "
                       "windows depend on it")
    return Finding(name, "clock", "ok", f"{skew:+.1f} s from the provider's Date header")


def _probe(name: str, inventory: Any) -> Finding:
    from keywatch import aio
    from keywatch.cli.check import probe_inventory

    t0 = time.perf_counter()
    [r] = aio.run(probe_inventory(inventory, [name], False))
    health = str(r.health)
    why = f"HTTP {r.http_status}" if r.http_status else "no HTTP answer"
    if r.error_code or r.error_message:
        why += f", {r.error_code or ''}{': ' if r.error_code and r.error_message else ''}{r.error_message or ''}"
    if r.compromised:
        return Finding(name, "probe", "fail", f"{health} but COMPROMISED: {r.compromise_reason}",
                       "rotate the key now and review its usage", ms=_ms(t0))
    status = "ok" if r.health.is_up and health == "healthy" else "warn" if r.health.is_up else "fail"
    return Finding(name, "probe", status, f"classified {health} ({why})"[:300], FIXES.get(health, ""), ms=_ms(t0))


def _permissions(name: str, config: Any, key: Any) -> list[Finding]:
    from keywatch.engine import actions
    from keywatch.engine.policy import effective_policies

    out = []
    policies = effective_policies(list(config.policies), config.safety)
    writes = sorted({
        f"{a.type} ({actions.get(a.type).capability.value})"
        for p in policies if getattr(p, "enabled", True)
        for a in p.action_list
        if actions.get(a.type).capability is not None and actions.get(a.type).needs_capability(a)
    })
    out.append(Finding(name, "permissions", "ok",
                       "read-only: the probe above is the read call the daemon makes with the key itself"))
    if not writes:
        out.append(Finding(name, "permissions", "ok", "no configured policy needs a provider write call"))
    elif key.account:
        out.append(Finding(name, "permissions", "ok",
                           f"write calls the policies may make through account {key.account!r}: "
                           f"{', '.join(writes)} (not tried: doctor changes nothing)",
                           "give the account's admin credential only these permissions (docs/providers.md)"))
    else:
        out.append(Finding(name, "permissions", "warn",
                           f"policies may call {', '.join(writes)}, but the key names no [[accounts]] entry: "
                           "those act in keywatch only",
                           "add `account = \"NAME\"` to the key and an [[accounts]] entry with an admin "
                           "credential, or set at_provider = false on the actions"))
    return out


READ_FIXES = {
    401: "the account's admin credential is refused: check the reference in [[accounts]] and that it is an "
         "admin/management key, not a project key",
    403: "the admin credential authenticates but may not read keys: grant it the read permission "
         "(docs/providers.md lists the permissions per provider)",
    404: "the key's record was not found with this admin credential: check the account's project / workspace "
         "/ resource, or set provider_key_id on the key",
}


async def _read_calls(inventory: Any, name: str, rotates: bool) -> list[tuple[str, str, str, str, float]]:
    """(call, status, detail, fix, ms) for each read-only management call this key's account allows."""
    from keywatch.providers.base import NotSupported, ProviderActionError
    from keywatch.providers.clients import AdapterSet, make_http_client
    from keywatch.redact import REGISTRY

    REGISTRY.replace(inventory.secrets())
    key = inventory.key(name)
    probe = inventory.config.probe
    http = make_http_client(probe.concurrency, probe.timeout, probe.max_body)
    adapters = AdapterSet(http, inventory.accounts, timeout=probe.timeout, completion_model=probe.completion_model)
    adapter = adapters.get(key.provider)
    calls = [("read the key's record", adapter.metadata)]
    if rotates:
        calls.append(("list the credentials beside it (rotation)", adapter.list_credentials))
    out = []
    try:
        for what, call in calls:
            t0 = time.perf_counter()
            try:
                await call(key)
            except NotSupported as exc:
                out.append((what, "skip", str(exc), "", _ms(t0)))
            except ProviderActionError as exc:
                fix = READ_FIXES.get(exc.status or 0, "see the reason; `keywatch check` shows whether the "
                                                      "provider is up")
                out.append((what, "fail", f"refused: {exc}", fix, _ms(t0)))
            except Exception as exc:  # a transport failure, an SDK error: reported, never a traceback
                out.append((what, "fail", f"failed: {type(exc).__name__}: {exc}",
                            "check the account's base URL and credential", _ms(t0)))
            else:
                out.append((what, "ok", "allowed", "", _ms(t0)))
    finally:
        await adapters.aclose()
        await http.aclose()
    return out


def _management(name: str, inventory: Any, key: Any) -> list[Finding]:
    from keywatch import aio
    from keywatch.rotation.config import rotate_every
    from keywatch.rotation.service import settings_of

    if not key.account:
        return []
    rotates = rotate_every(inventory.key(name), settings_of(inventory.config)) is not None
    return [Finding(name, "permissions", status, f"account {key.account!r}: {what}: {detail}"[:300], fix, ms=ms)
            for what, status, detail, fix, ms in aio.run(_read_calls(inventory, name, rotates))]


def _history(name: str, config: Any) -> Finding:
    from keywatch.cli.common import new_store

    url = str(config.daemon.database or "")
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return Finding(name, "history", "skip", "no database yet (the daemon has not run with this config)")
    store = new_store(config)
    try:
        events = store.events(key=name, limit=5)
    except Exception as exc:
        return Finding(name, "history", "skip", f"the database cannot be read ({type(exc).__name__})",
                       "`keywatch db upgrade` or check daemon.database")
    finally:
        store.dispose()
    if not events:
        return Finding(name, "history", "ok", "no events recorded for this key")
    lines = "; ".join(f"{e.at:%Y-%m-%d %H:%M} {e.kind}: {e.message}" for e in events)
    return Finding(name, "history", "ok", lines[:600])


def diagnose(config: Any, source: str, key: Any) -> list[Finding]:
    from keywatch.redact import REGISTRY
    from keywatch.settings import secrets
    from keywatch.settings.loader import ConfigError, build_inventory

    name = key.name
    out: list[Finding] = []
    try:
        secret = secrets.resolve(key.secret, allow_literal=config.daemon.allow_literal_secrets)
        REGISTRY.add({secret.reveal()})
        out.append(Finding(name, "secret", "ok", f"{key.secret.partition(':')[0]}: resolves, {secret.fingerprint}"))
        resolved = True
    except secrets.SecretError as exc:
        out.append(Finding(name, "secret", "fail", str(exc),
                           "set the variable in the daemon's environment (systemd: EnvironmentFile=), or fix "
                           "the file path and its permissions"))
        resolved = False
    url = _base_url(key)
    reachable = False
    inventory = None
    if url:
        found, reachable = _network(name, url)
        out += found
    else:
        out.append(Finding(name, "network", "skip", "no base URL to check (set base_url)"))
    if resolved and reachable:
        try:
            inventory = build_inventory(config.model_copy(update={"keys": [key]}), source)
            out.append(_probe(name, inventory))
        except ConfigError as exc:
            out.append(Finding(name, "probe", "skip", "; ".join(exc.problems)[:300],
                               "fix the problems above (keywatch config validate)"))
    else:
        out.append(Finding(name, "probe", "skip", "not probed: " + ("the secret does not resolve" if not resolved
                                                                  else "the base URL is not reachable"),
                           "fix the findings above first"))
    out += _permissions(name, config, key)
    if inventory is not None:
        out += _management(name, inventory, key)
    if url and reachable:
        out.append(_clock(name, url))
    out.append(_history(name, config))
    return out


def cmd_doctor(args: argparse.Namespace) -> int:
    """Diagnose each configured key (or one): secret reference, DNS/TCP/TLS with timings, a probe with its
    classification, the provider calls the policies need, clock skew, recent history; each finding with
    a suggested fix. Changes nothing."""
    from keywatch.redact import REGISTRY
    from keywatch.settings.loader import load

    config = load(args.config)
    keys = [k for k in config.keys if not args.key or k.name == args.key]
    if args.key and not keys:
        known = ", ".join(k.name for k in config.keys) or "none"
        raise CliError(f"{args.config}: no key named {args.key!r} in [[keys]] (known: {known})")
    if not keys:
        raise CliError(f"{args.config}: no [[keys]] configured")
    findings = [f for k in keys for f in diagnose(config, str(args.config), k)]
    if args.json:
        print(REGISTRY.redact(json.dumps([asdict(f) for f in findings], indent=2)))
    else:
        for f in findings:
            timing = f" ({f.ms:.0f} ms)" if f.ms is not None else ""
            print(REGISTRY.redact(f"{f.key:<16} {f.check:<12} {f.status.upper():<5} {f.detail}{timing}"))
            if f.fix and f.status != "ok":
                print(REGISTRY.redact(f"{'':<16} {'':<12} fix:  {f.fix}"))
    return EXIT_ATTENTION if any(f.status in ("fail", "warn") for f in findings) else EXIT_OK
