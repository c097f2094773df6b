"""Secret hygiene across every output channel: a daemon at debug level whose providers quote the keys they
are given back (whole, their first 20 characters, in the error code, in a plain-text 500) and whose sinks
quote their own URLs (a webhook answering `404 Cannot POST /hook/<token>`), then every place text leaves
keywatch is read for the secrets and for any 8 characters in a row of one: stdout, the debug log on stderr,
the SQLite file and its WAL (bytes), /metrics, every payload the sinks received, `keywatch status --json`,
`keywatch check` (table and JSON), `keywatch events` and `keywatch alert test`."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import string
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from keywatch.domain import is_public_prefix
from keywatch.settings.loader import parse
from tests.faults.support import wait_for
from tests.integration.conftest import free_port, toml_config
from tests.integration.test_notify_delivery import Received, ThreadedReceiver

pytestmark = pytest.mark.slow

PART = 8  # the promise: not even 8 characters in a row of a secret
_rng = random.Random(20250101)


def token(prefix: str = "", n: int = 32) -> str:
    return prefix + "".join(_rng.choices(string.ascii_letters + string.digits, k=n))


# How the hostile provider answers each key (chosen by the key's first characters).
QUOTES = {
    "qw": lambda s: (401, {"error": {"message": f"Incorrect API key provided: {s}", "code": "invalid_api_key"}}),
    "qf": lambda s: (401, {"error": {"message": f"Unknown key {s[:20]} (check the first 20 characters)",
                                     "type": "invalid_request_error"}}),
    "qc": lambda s: (403, {"error": {"message": "denied", "code": f"key_{s}_denied", "type": s[:24]}}),
    "qt": lambda s: (500, f"upstream exploded while checking {s} / {s[:12]}"),
}


def hostile_provider(r: Received) -> tuple[int, dict[str, str], str]:
    key = r.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    status, body = QUOTES.get(key[:2], QUOTES["qw"])(key)
    if isinstance(body, str):
        return status, {"Content-Type": "text/plain"}, body
    return status, {"Content-Type": "application/json"}, json.dumps(body)


def leaks(text: str, secrets: dict[str, str]) -> list[str]:
    """Each secret of which 8 characters in a row show in `text` (a public key prefix such as `sk-proj-`,
    which every masked form shows, is not a secret)."""
    found = []
    for name, s in secrets.items():
        for i in range(len(s) - PART + 1):
            part = s[i : i + PART]
            if part in text and not is_public_prefix(part):
                found.append(f"{name}: {part!r}")
                break
    return found




def keywatch(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keywatch", *argv], env=env, capture_output=True, text=True,
                          timeout=60)


def test_no_secret_nor_any_part_of_one_leaves_keywatch(sim, tmp_path: Path, figure) -> None:
    keys = {f"KW_KEY_{p.upper()}": token(p, 38) for p in QUOTES}
    sim_key = token("sk-proj-", 40)  # the simulator's OpenAI route quotes a masked form of it
    sim.set_key(sim_key, provider="openai", behaviour="invalid")
    hook_token, slack_token, hmac, am_password = token(n=24), token("xox", 24), token("whsec-"), token("Am-", 16)
    secrets = {**keys, "KW_KEY_SIM": sim_key, "hook token": hook_token, "slack token": slack_token,
               "slack team": "T0" + token(n=9), "hmac": hmac, "alertmanager password": am_password}

    def sinks(r: Received) -> tuple[int, dict[str, str], str]:
        if r.path.startswith("/hook/"):
            return 404, {"Content-Type": "text/plain"}, f"Cannot POST {r.path}"
        return 200, {}, "ok"

    with ThreadedReceiver(hostile_provider) as provider, ThreadedReceiver(sinks) as rx:
        listen = f"127.0.0.1:{free_port()}"
        key_entries = [{"name": f"hostile-{p}", "provider": "openai_compatible", "secret": f"env:{env}",
                        "base_url": provider.url("/v1")} for p, env in zip(QUOTES, keys, strict=True)]
        key_entries.append({"name": "sim-openai", "provider": "openai", "secret": "env:KW_KEY_SIM",
                            "base_url": f"{sim.url}/openai/v1"})
        am_url = rx.url("").replace("http://", f"http://keywatch:{am_password}@")
        extra = (
            '\n[safety]\ndisable_after_probes = 1\n\n[alerts]\ngroup_wait = "1s"\n'
            '\n[[alerts.sinks]]\nname = "hook"\ntype = "webhook"\nurl = "env:KW_HOOK"\nsecret = "env:KW_HMAC"\n'
            '\n[[alerts.sinks]]\nname = "slack"\ntype = "slack"\nurl = "env:KW_SLACK"\n'
            f'\n[[alerts.sinks]]\nname = "am"\ntype = "alertmanager"\nurl = "{am_url}"\nresend_interval = "2s"\n'
        )
        cfg = tmp_path / "keywatch.toml"
        db = tmp_path / "k.db"
        cfg.write_text(toml_config(key_entries, db=db, listen=listen, interval="1s", extra=extra)
                       .replace("[daemon]\n", '[daemon]\nlog_level = "debug"\n', 1))
        assert parse(cfg.read_text()).daemon.log_level == "debug"
        env = {k: os.environ[k] for k in ("PATH", "HOME", "PYTHONPATH") if k in os.environ}
        env.update({k: v for k, v in secrets.items() if k.startswith("KW_")})
        env.update(KW_HOOK=rx.url(f"/hook/{hook_token}"), KW_HMAC=hmac,
                   KW_SLACK=rx.url(f"/services/{secrets['slack team']}/B01/{slack_token}"))
        stdout, stderr = tmp_path / "daemon.out", tmp_path / "daemon.err"
        daemon = subprocess.Popen([sys.executable, "-m", "keywatch", "run", "-c", str(cfg)], env=env,
                                  stdout=stdout.open("w"), stderr=stderr.open("w"))
        channels: dict[str, str | bytes] = {}
        reader = None
        try:
            # A second connection held open keeps the WAL file with what the daemon wrote (SQLite folds
            # it into the database and removes it when the last connection closes).
            wait_for(lambda: db.exists() and db.stat().st_size > 0, "the database")
            reader = sqlite3.connect(db)
            wait_for(lambda: reader.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] > 0, "the tables")
            wait_for(lambda: any("sink_broken" in json.dumps(r.json()) for r in rx.accepted()),
                     "the sink_broken alert about the webhook at the other sinks")
            wait_for(lambda: sum("hostile-" in json.dumps(r.json()) for r in rx.accepted()) >= 2,
                     "the key alerts at the other sinks")
            with urllib.request.urlopen(f"http://{listen}/metrics", timeout=10) as resp:
                channels["/metrics"] = resp.read().decode()
            channels["sqlite file (daemon running)"] = db.read_bytes()
            wal = Path(f"{db}-wal")
            channels["sqlite WAL (daemon running)"] = wal.read_bytes() if wal.exists() else b""
            status = keywatch("status", "-c", str(cfg), "--json", env=env)
            channels["keywatch status --json"] = status.stdout + status.stderr
        finally:
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(30) == 0, stderr.read_text()[-3000:]
            if reader is not None:
                reader.close()
        channels["daemon stdout"] = stdout.read_text()
        channels["daemon stderr (debug log)"] = stderr.read_text()
        channels["sqlite file"] = db.read_bytes()
        # What keywatch sent, not where: the webhook's own path holds its token by design.
        channels["sink payloads (webhook, Slack, Alertmanager)"] = "\n".join(
            f"{json.dumps({k: v for k, v in r.headers.items() if k.lower() != 'authorization'})} "
            f"{r.body.decode(errors='replace')}" for r in rx.requests)
        for name, argv in {"keywatch check": ("check",), "keywatch check --json": ("check", "--json"),
                           "keywatch events": ("events", "--since", "1h"),
                           "keywatch alert test": ("alert", "test")}.items():
            out = keywatch(*argv, "-c", str(cfg), env=env)
            assert "Traceback" not in out.stdout + out.stderr, f"{name}:\n{out.stderr}"
            channels[name] = out.stdout + out.stderr
            if name == "keywatch check --json":
                check = json.loads(out.stdout)
    # The scenario did what it says: the providers quoted the keys, the webhook quoted its path.
    assert len(provider.requests) >= 2 * len(QUOTES)
    assert {r["key"]: r["health"] for r in check}["hostile-qw"] == "invalid"
    assert "Cannot POST /hook/" in channels["daemon stderr (debug log)"]  # the answer is logged, masked
    assert any(r.path == f"/hook/{hook_token}" and r.status == 404 for r in rx.requests)
    assert '"level": "debug"' in channels["daemon stderr (debug log)"]

    empty = [name for name, text in channels.items() if not text]
    assert set(empty) <= {"daemon stdout"}, empty  # every other channel had something to read
    found = {name: leaks(text.decode(errors="replace") if isinstance(text, bytes) else text, secrets)
             for name, text in channels.items()}
    found = {k: v for k, v in found.items() if v}
    assert not found, found
    figure("secret hygiene", f"{len(channels)} channels checked (daemon stdout and debug log, SQLite file and WAL, "
           f"/metrics, sink payloads, status, check, events, alert test), {len(secrets)} secrets planted "
           f"({len(QUOTES)} quoted back by a hostile provider, 1 by the simulator, sink URL tokens, HMAC key, "
           "Alertmanager password), leaks found = 0")


def test_no_secret_old_or_new_leaves_keywatch_during_and_after_a_rotation(sim, tmp_path: Path, figure) -> None:
    """A daemon at debug level rotates two OpenRouter keys on its timer: one to the end (created, published,
    verified, promoted, the old key deleted), one whose destination refuses the write (rolled back, the new
    credential revoked, an alert with the reason). Read for the old, the new and the management secrets, and
    any 8 characters in a row of them: the debug log, stdout, /metrics during the rotation, the SQLite file
    and WAL, the alert payloads, `keywatch rotations` (table and --json), `keywatch rotate` (refused: in
    flight or not due) and `keywatch events`."""
    management, old, old2 = token("sk-or-v1-", 64), token("sk-or-v1-", 64), token("sk-or-v1-", 64)
    sim.set_key(management, "openrouter", "admin")
    sim.set_key(old, "openrouter", hash="h_hyg_old", name="hyg-router", limit=10)
    sim.set_key(old2, "openrouter", hash="h_hyg_old2", name="hyg-router2", limit=10)
    base = f"{sim.url}/openrouter/api/v1"
    dest = tmp_path / "router.key"
    dest.write_text(old + "\n")
    (tmp_path / "k2").write_text(old2 + "\n")
    blocker = tmp_path / "blocker"  # the destination refuses the write: its directory is a file (even for root)
    blocker.write_text("not a directory\n")
    with ThreadedReceiver(lambda r: (200, {}, "ok")) as rx:
        listen = f"127.0.0.1:{free_port()}"
        db = tmp_path / "k.db"
        cfg = tmp_path / "keywatch.toml"
        cfg.write_text(f'''[daemon]
database = "sqlite:///{db}"
listen = "{listen}"
log_level = "debug"

[probe]
interval = "1s"
jitter = 0

[[accounts]]
name = "or"
provider = "openrouter"
admin_secret = "env:KW_OR_ADMIN"
base_url = "{base}"

[[keys]]
name = "hyg-router"
provider = "openrouter"
secret = "file:{dest}"
base_url = "{base}"
account = "or"
rotate_every = "1d"
publish = ["file:{dest}"]
grace = "15s"

[[keys]]
name = "hyg-router2"
provider = "openrouter"
secret = "file:{tmp_path / "k2"}"
base_url = "{base}"
account = "or"
rotate_every = "1d"
publish = ["envfile:{blocker / "router2.env"}#ROUTER_KEY"]

[rotation]
check_interval = "1s"
verify_interval = "100ms"
allow_destructive = true

[alerts]
group_wait = "1s"

[[alerts.sinks]]
name = "hook"
type = "webhook"
url = "env:KW_HOOK"
''')
        env = {k: os.environ[k] for k in ("PATH", "HOME", "PYTHONPATH") if k in os.environ}
        env.update(KW_OR_ADMIN=management, KW_HOOK=rx.url("/hook"))
        stdout, stderr = tmp_path / "daemon.out", tmp_path / "daemon.err"
        daemon = subprocess.Popen([sys.executable, "-m", "keywatch", "run", "-c", str(cfg)], env=env,
                                  stdout=stdout.open("w"), stderr=stderr.open("w"))
        channels: dict[str, str | bytes] = {}
        reader = None

        def rotations() -> list[dict]:
            out = keywatch("rotations", "--json", "-c", str(cfg), env=env)
            return json.loads(out.stdout) if out.returncode == 0 and out.stdout.strip() else []

        try:
            wait_for(lambda: db.exists() and db.stat().st_size > 0, "the database")
            reader = sqlite3.connect(db)
            wait_for(lambda: any(r["step"] == "grace" for r in rotations()), "a rotation in grace", timeout=90)
            with urllib.request.urlopen(f"http://{listen}/metrics", timeout=10) as resp:
                channels["/metrics (during the rotation)"] = resp.read().decode()
            again = keywatch("rotate", "hyg-router", "--now", "-c", str(cfg), env=env)
            channels["keywatch rotate (in flight)"] = again.stdout + again.stderr
            wait_for(lambda: {r["key"]: r["state"] for r in rotations()} == {"hyg-router": "done",
                                                                              "hyg-router2": "rolled_back"},
                     "the rotation done and the other rolled back", timeout=120)
            wait_for(lambda: any("rotation_failed" in json.dumps(r.json()) for r in rx.accepted()),
                     "the rotation_failed alert at the webhook")
            with urllib.request.urlopen(f"http://{listen}/metrics", timeout=10) as resp:
                channels["/metrics (after)"] = resp.read().decode()
            channels["sqlite file (daemon running)"] = db.read_bytes()
            wal = Path(f"{db}-wal")
            channels["sqlite WAL (daemon running)"] = wal.read_bytes() if wal.exists() else b""
        finally:
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(30) == 0, stderr.read_text()[-3000:]
            if reader is not None:
                reader.close()
        new = dest.read_text().strip()
        channels["daemon stdout"] = stdout.read_text()
        channels["daemon stderr (debug log)"] = stderr.read_text()
        channels["sqlite file"] = db.read_bytes()
        channels["alert payloads"] = "\n".join(f"{json.dumps(dict(r.headers))} {r.body.decode(errors='replace')}"
                                               for r in rx.requests)
        for name, argv in {"keywatch rotations": ("rotations",), "keywatch rotations --json": ("rotations", "--json"),
                           "keywatch rotate (not due)": ("rotate", "hyg-router"),
                           "keywatch events": ("events", "--since", "1h")}.items():
            out = keywatch(*argv, "-c", str(cfg), env=env)
            assert "Traceback" not in out.stdout + out.stderr, f"{name}:\n{out.stderr}"
            channels[name] = out.stdout + out.stderr
    # The scenario did what it says: a new key published and working, the old one gone, one rolled back
    # with its reason.
    assert new != old and new.startswith("sk-or-v1-")
    assert "already in flight" in channels["keywatch rotate (in flight)"]
    assert "not due until" in channels["keywatch rotate (not due)"]
    assert "rotation_step" in channels["daemon stderr (debug log)"]
    assert "hyg-router2" in channels["alert payloads"] and "publish_pending" in channels["alert payloads"]
    assert 'keywatch_rotation_in_progress{key="hyg-router",step="grace"}' in channels["/metrics (during the rotation)"]
    secrets = {"old": old, "new": new, "old2": old2, "management": management}
    empty = [name for name, text in channels.items() if not text]
    assert set(empty) <= {"daemon stdout", "sqlite WAL (daemon running)"}, empty  # the WAL: if not checkpointed
    # Every masked form shows "sk-or-v1-" (OpenRouter's public prefix): the 8-character windows inside it are
    # not a leak; every window with one character past it is checked.
    found = {name: [f"{k}: {s[j:j + PART]!r}" for k, s in secrets.items()
                    for j in range(len("sk-or-v1-") - PART + 1, len(s) - PART + 1)
                    if s[j:j + PART] in (text.decode(errors="replace") if isinstance(text, bytes) else text)][:3]
             for name, text in channels.items()}
    found = {k: v for k, v in found.items() if v}
    assert not found, found
    figure("rotation secret hygiene", f"{len(channels)} channels checked during and after a rotation done and one "
           "rolled back (debug log, /metrics, SQLite file and WAL, alert payloads, rotations, rotate, events), "
           f"{len(secrets)} secrets (old, new, management), leaks found = 0")
async def test_no_reported_secret_nor_part_of_one_leaves_keywatch_through_the_leak_receivers(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], figure
) -> None:
    """Leak reports carry secrets by nature: managed ones (contained), unmanaged ones (recorded as unmanaged
    leaks), quoted even in where they were found; the receivers' own secrets sign them. None of them, nor 8
    characters in a row of one, shows in the receivers' answers, the alerts, the log, /metrics, the SQLite
    file and WAL, `keywatch events` or `keywatch status --json`."""
    import asyncio
    import hashlib
    import hmac as hmac_mod

    from keywatch.sim.routes import github as gh
    from tests.integration import leaks_harness as lh

    h = await lh.start(tmp_path, 4, tag="HYG")
    strangers = {
        "github stranger": "sk-or-v1-" + token(n=64).lower(),
        "partner stranger": token("sk-ant-api03-", 60),
        "generic stranger": token("sk-proj-", 48),
    }
    answers: list[str] = []
    try:
        await h.cycles(1)
        reader = sqlite3.connect(tmp_path / "kw.db")
        # A managed key and a stranger reported by GitHub, the secret also in the path where it was found.
        for n, secret in enumerate([h.secrets["k1"], strangers["github stranger"]]):
            payload = gh.plant_alert(h.sim.state, "acme/shop", n + 1, secret, path=f"env/{secret}.txt")
            answers.append(
                json.dumps(await h.post("/hooks/github/secret-scanning", *gh.webhook(lh.HOOK_SECRET, payload)))
            )
        tokens = [
            {"token": h.secrets["k2"], "type": "openrouter_api_key", "url": f"https://x/{h.secrets['k2']}"},
            {"token": strangers["partner stranger"], "type": "anthropic_api_key", "source": "content"},
        ]
        answers.append(json.dumps(await h.post("/hooks/github/partner", *gh.partner_report(h.sim.state, tokens))))
        finding = json.dumps(
            [
                {
                    "secret": strangers["generic stranger"],
                    "location": f"ci log: OPENAI_API_KEY={strangers['generic stranger']}",
                },
                {"secret": h.secrets["k3"], "location": f"siem: Authorization: Bearer {h.secrets['k3']}"},
            ]
        ).encode()
        sig = "sha256=" + hmac_mod.new(lh.GENERIC_HMAC.encode(), finding, hashlib.sha256).hexdigest()
        answers.append(
            json.dumps(
                await h.post(
                    "/api/v1/leaks", finding, {"Content-Type": "application/json", "X-Keywatch-Signature-256": sig}
                )
            )
        )
        # Refusals quote nothing of what they were sent.
        answers.append(
            json.dumps(
                await h.post(
                    "/api/v1/leaks",
                    finding,
                    {"Content-Type": "application/json", "Authorization": f"Bearer {finding[:40]!r}"},
                )
            )
        )
        answers.append(
            json.dumps(
                await h.post(
                    "/api/v1/leaks",
                    b'{"secret": "' + h.secrets["k0"].encode(),
                    {"Content-Type": "application/json", "Authorization": f"Bearer {lh.GENERIC_TOKEN}"},
                )
            )
        )
        await h.leaks.idle()
        await h.cycles(1)
        assert all(h.disabled_at_provider(k) for k in ("k1", "k2", "k3")) and not h.disabled_at_provider("k0")
        assert len([a for a in h.alerts if a.identity.startswith("leak_unmanaged:")]) == 3
        channels: dict[str, str | bytes] = {
            "receiver answers": "\n".join(answers),
            "alerts": json.dumps([[a.identity, a.title, a.summary, a.fields, a.labels] for a in h.alerts]),
            "/metrics": b"".join(h.daemon.metrics.exposition_chunks()).decode(),
        }
        wal = Path(f"{tmp_path / 'kw.db'}-wal")
        channels["sqlite WAL (daemon running)"] = wal.read_bytes() if wal.exists() else b""
        reader.close()
    finally:
        await lh.stop(h)
    channels["sqlite file"] = (tmp_path / "kw.db").read_bytes()
    env = {**os.environ}
    for name, argv in {
        "keywatch events": ("events", "--since", "1h"),
        "keywatch status --json": ("status", "--json"),
    }.items():
        out = await asyncio.to_thread(keywatch, *argv, "-c", str(tmp_path / "keywatch.toml"), env=env)
        assert "Traceback" not in out.stdout + out.stderr, out.stderr
        channels[name] = out.stdout + out.stderr
    assert "unmanaged leak" in channels["keywatch events"] and "compromised" in channels["keywatch status --json"]
    out, err = capfd.readouterr()
    channels["log"] = out + err
    secrets = {
        **{f"managed {k}": v for k, v in h.secrets.items()},
        **strangers,
        "webhook secret": lh.HOOK_SECRET,
        "github token": lh.GITHUB_TOKEN,
        "generic token": lh.GENERIC_TOKEN,
        "generic hmac": lh.GENERIC_HMAC,
        "management key": lh.MANAGEMENT,
    }
    found = {
        name: beyond_prefix(text.decode(errors="replace") if isinstance(text, bytes) else text, secrets)
        for name, text in channels.items()
    }
    found = {k: v for k, v in found.items() if v}
    assert not found, found
    figure(
        "leak secret hygiene",
        f"{len(channels)} channels checked after GitHub, partner and generic reports "
        f"({len(secrets)} secrets: managed keys, unmanaged leaked ones quoted in their locations, the "
        "receivers' secrets), leaks found = 0",
    )


def beyond_prefix(text: str, secrets: dict[str, str]) -> list[str]:
    """As `leaks`, but a window inside the public prefix a masked form keeps (`sk-or-v1-`, `sk-ant-api03-`)
    is not a part of the secret."""
    from keywatch.domain import mask

    found = []
    for name, s in secrets.items():
        shown = mask(s).partition("...")[0]
        keep = len(shown) if s.startswith(shown) else 0
        for i in range(len(s) - PART + 1):
            part = s[i : i + PART]
            if i + PART > keep and part in text:
                found.append(f"{name}: {part!r}")
                break
    return found
