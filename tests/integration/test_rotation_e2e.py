"""Rotation end to end against the simulator (a real HTTP server): while a client that reads the key from
the destination before every request hammers the provider, the state machine rotates the key through the
real adapter. The client sees zero failed requests, and afterwards exactly one credential remains at the
provider: the one the destination publishes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx2
import pytest

from keywatch.domain import Account, Health, ManagedKey, Secret
from keywatch.providers.base import ProviderAdapter
from keywatch.providers.openai import OpenAIAdapter
from keywatch.providers.openrouter import OpenRouterAdapter
from keywatch.rotation.machine import Machine, Policy, new_rotation
from keywatch.rotation.store import Rotation, RotationStore
from keywatch.secretstores import open_destination
from keywatch.sim import Simulator
from keywatch.store.repo import Store

OR_MANAGEMENT = "sk-or-v1-" + "c3" * 32
OR_OLD = "sk-or-v1-" + "d4" * 32
OAI_ADMIN = "sk-admin-Zt8Qp3Lm5Nx7Tv2Wy4Bc6Df9Gh1Jk0Lp2Mq4Nr6Ts8Uv0ADMN"
OAI_OLD = "sk-svcacct-Zt4bW9xQ2LmN7pR3sT8vY1zA6cD0eF5gH2jK4Lq9Wm3Nb5Vc7Xz1GDYA"


def openrouter(sim: Simulator, http: httpx2.AsyncClient) -> tuple[ProviderAdapter, ManagedKey, str]:
    sim.set_key(OR_MANAGEMENT, "openrouter", "admin")
    sim.set_key(OR_OLD, "openrouter", hash="h_old", name="router", limit=25)
    base = f"{sim.url}/openrouter/api/v1"
    account = Account("or", "openrouter", admin_secret=Secret(OR_MANAGEMENT), base_url=base)
    key = ManagedKey("router", "openrouter", Secret(OR_OLD), "env:R", base_url=base, account="or")
    return OpenRouterAdapter(http, {"or": account}, timeout=5), key, OR_OLD


def openai(sim: Simulator, http: httpx2.AsyncClient) -> tuple[ProviderAdapter, ManagedKey, str]:
    sim.set_key(OAI_ADMIN, "openai", "admin")
    sim.set_key(OAI_OLD, "openai", project_id="proj_prod", key_id="key_old", name="app",
                owner_type="service_account", owner_id="svc_acct_app")
    base = f"{sim.url}/openai/v1"
    account = Account("org", "openai", admin_secret=Secret(OAI_ADMIN), base_url=base)
    key = ManagedKey("app", "openai", Secret(OAI_OLD), "env:APP", base_url=base, account="org")
    return OpenAIAdapter(http, {"org": account}, timeout=5), key, OAI_OLD


def azure(sim: Simulator, http: httpx2.AsyncClient) -> tuple[ProviderAdapter, ManagedKey, str]:
    pytest.importorskip("azure.mgmt.cognitiveservices", reason="needs keywatch[azure]")
    import time

    from azure.core.credentials import AccessToken

    from keywatch.providers.azure_openai import AzureOpenAIAdapter
    from keywatch.sim.routes import azure as azure_sim

    class FakeCredential:
        def get_token(self, *scopes: str, **kw: object) -> AccessToken:
            return AccessToken("sim-arm-token", int(time.time()) + 3600)

    acct = azure_sim.add_account(sim.state, "aoai-e2e", endpoint=f"{sim.url}/azure/aoai-e2e")
    account = Account("az", "azure_openai", base_url=f"{sim.url}/azure/arm",
                      options={"subscription_id": "sub-1", "resource_group": "rg-1", "account_name": "aoai-e2e"})
    adapter = AzureOpenAIAdapter(http, {"az": account}, timeout=5, credential_factory=lambda a: FakeCredential())
    key = ManagedKey("aoai", "azure_openai", Secret(acct["key1"]), "env:AZ", account="az",
                     options={"endpoint": f"{sim.url}/azure/aoai-e2e"})
    return adapter, key, acct["key1"]


class Hammer:
    """A client: reads the key from the file before each request, sends requests until stopped."""

    def __init__(self, adapter: ProviderAdapter, key: ManagedKey, path: Path) -> None:
        self.adapter, self.key, self.path = adapter, key, path
        self.sent = self.failed = 0
        self.failures: list[str] = []
        self._stop = asyncio.Event()

    async def run(self) -> None:
        while not self._stop.is_set():
            value = self.path.read_text().strip()
            result = await self.adapter.probe(ManagedKey(self.key.name, self.key.provider, Secret(value), "file:x",
                                                         base_url=self.key.base_url, account=self.key.account,
                                                         options=self.key.options))
            self.sent += 1
            if result.health is not Health.HEALTHY:
                self.failed += 1
                self.failures.append(f"{result.health} {result.error_code}")
            await asyncio.sleep(0.005)

    def stop(self) -> None:
        self._stop.set()


@pytest.mark.parametrize("setup", [openrouter, openai, azure], ids=["openrouter", "openai", "azure_openai"])
async def test_rotation_under_load_has_zero_failed_requests_and_leaves_one_credential(
    fresh_sim: Simulator, tmp_path: Path, setup
) -> None:
    fresh_sim.state.propagation_delay_s = 0.4  # the new key works only after a while, as at real providers
    store = Store(f"sqlite:///{tmp_path / 'k.db'}")
    store.upgrade()
    rows = RotationStore(store.engine)
    path = tmp_path / "key"
    async with httpx2.AsyncClient() as http:
        adapter, key, old = setup(fresh_sim, http)
        path.write_text(old + "\n")
        dest = open_destination(f"file:{path}")
        steps: list[str] = []

        async def save(r: Rotation) -> None:
            await asyncio.to_thread(rows.save, r)
            steps.append(r.step)

        m = Machine(adapter, [dest], save, lambda: datetime.now(UTC),
                    Policy(grace=timedelta(seconds=0.5), verify_timeout=timedelta(seconds=10), verify_interval=0.05,
                           allow_destructive=True))
        hammer = Hammer(adapter, key, path)
        client = asyncio.ensure_future(hammer.run())
        await asyncio.sleep(0.2)
        r = await m.run(new_rotation(key, "create", actor="test", reason="due", at=datetime.now(UTC)), key)
        while r.state == "running":
            await asyncio.sleep(0.1)
            r = await m.run(r, key)
        await asyncio.sleep(0.3)  # the client keeps going after the old key is gone
        hammer.stop()
        await client
        assert r.state == "done", r.error
        assert [s for s in dict.fromkeys(steps)] == ["started", "create", "publish_pending", "verify", "promote",
                                                     "grace", "retire_old", "done"]
        assert hammer.sent > 50 and hammer.failed == 0, hammer.failures[:5]
        published = path.read_text().strip()
        assert published != old
        creds = await adapter.list_credentials(adapter.with_credential(key, m_new(published, r)))
        if key.provider == "azure_openai":  # two slots always: the old one was regenerated
            assert [c.id for c in creds] == ["key1", "key2"] and r.new_credential == "key2"
        else:
            assert [c.id for c in creds] == [r.new_credential]
        assert (await adapter.probe(ManagedKey(key.name, key.provider, Secret(published), "x", base_url=key.base_url,
                                               account=key.account, options=key.options))).health is Health.HEALTHY
        assert (await adapter.probe(key)).health is Health.INVALID  # the old key is retired
        stored = repr([x.as_dict() for x in rows.history()])
        assert old not in stored and published not in stored and published[-8:] not in stored
    store.dispose()


def m_new(value: str, r: Rotation):
    from keywatch.providers.base import NewCredential

    return NewCredential(r.new_credential or "", Secret(value), {})


CLI_MANAGEMENT = "sk-or-v1-" + "e5" * 32
CLI_OLD = "sk-or-v1-" + "f6" * 32


def test_keywatch_rotate_publishes_a_working_key_and_prints_no_secret(sim, tmp_path: Path) -> None:
    """`keywatch rotate KEY --now` against the simulator: the file destination ends up with a new key that
    works, `keywatch rotations --json` shows the rotation in grace, and no output holds a secret."""
    import json
    import os
    import subprocess
    import sys

    sim.set_key(CLI_MANAGEMENT, "openrouter", "admin")
    sim.set_key(CLI_OLD, "openrouter", hash="h_cli_old", name="cli-router", limit=10)
    base = f"{sim.url}/openrouter/api/v1"
    dest = tmp_path / "router.key"
    dest.write_text(CLI_OLD + "\n")
    cfg = tmp_path / "keywatch.toml"
    cfg.write_text(f'''[daemon]
database = "sqlite:///{tmp_path / 'k.db'}"

[[accounts]]
name = "or"
provider = "openrouter"
admin_secret = "env:KW_OR_ADMIN"
base_url = "{base}"

[[keys]]
name = "cli-router"
provider = "openrouter"
secret = "file:{dest}"
base_url = "{base}"
account = "or"
publish = ["file:{dest}"]
grace = "1h"

[rotation]
verify_interval = "100ms"
''')
    env = {k: os.environ[k] for k in ("PATH", "HOME", "PYTHONPATH") if k in os.environ}
    env["KW_OR_ADMIN"] = CLI_MANAGEMENT

    def kw(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "keywatch", *argv, "-c", str(cfg)], env=env,
                              capture_output=True, text=True, timeout=120)

    dry = kw("rotate", "cli-router", "--now", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would rotate cli-router" in dry.stdout and dest.read_text().strip() == CLI_OLD
    out = kw("rotate", "cli-router", "--now")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "promoted" in out.stdout
    new = dest.read_text().strip()
    assert new != CLI_OLD and new.startswith("sk-or-v1-")
    again = kw("rotate", "cli-router", "--now")
    assert again.returncode == 1 and "already in flight" in again.stdout  # one rotation per key at a time
    listed = kw("rotations", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["key"], r["step"], r["state"], r["old_credential"]) for r in rows] == [
        ("cli-router", "grace", "running", "h_cli_old")]
    everything = "".join(p.stdout + p.stderr for p in (dry, out, again, listed))
    everything += (tmp_path / "k.db").read_bytes().decode("latin-1")
    for s in (CLI_OLD, new, CLI_MANAGEMENT):
        assert s not in everything and s[-10:] not in everything


ANT_ADMIN = "sk-ant-admin01-" + "R" * 40
ANT_OLD = "sk-ant-api03-" + "P" * 40 + "oldB"
ANT_NEW = "sk-ant-api03-" + "S" * 40 + "newB"


def test_anthropic_assisted_rotation_end_to_end(sim, tmp_path: Path) -> None:
    """A person made the new key (Anthropic has no create API); `keywatch rotate KEY --new-secret REF`
    verifies it, publishes and promotes it, and retires the old key through the Admin API (inactive, not
    archived without allow_destructive)."""
    import json
    import os
    import subprocess
    import sys
    import urllib.request

    base = f"{sim.url}/anthropic"
    sim.set_key(ANT_ADMIN, "anthropic", "admin")
    sim.set_key(ANT_OLD, "anthropic", key_id="apikey_e2e_old", name="claude-e2e", workspace_id="wrk_e2e")
    sim.set_key(ANT_NEW, "anthropic", key_id="apikey_e2e_new", name="claude-e2e-2", workspace_id="wrk_e2e")
    dest = tmp_path / "claude.key"
    dest.write_text(ANT_OLD + "\n")
    cfg = tmp_path / "keywatch.toml"
    cfg.write_text(f'''[daemon]
database = "sqlite:///{tmp_path / 'k.db'}"

[[accounts]]
name = "ant"
provider = "anthropic"
admin_secret = "env:KW_ANT_ADMIN"
base_url = "{base}"

[[keys]]
name = "claude"
provider = "anthropic"
secret = "file:{dest}"
base_url = "{base}"
account = "ant"
publish = ["file:{dest}"]
grace = "0s"

[rotation]
verify_interval = "100ms"
''')
    env = {k: os.environ[k] for k in ("PATH", "HOME", "PYTHONPATH") if k in os.environ}
    env.update(KW_ANT_ADMIN=ANT_ADMIN, KW_NEW=ANT_NEW)

    def kw(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "keywatch", *argv, "-c", str(cfg)], env=env,
                              capture_output=True, text=True, timeout=120)

    asked = kw("rotate", "claude", "--now")  # no new value yet: the operator is told what to do
    assert asked.returncode == 1 and "assisted" in asked.stdout
    out = kw("rotate", "claude", "--new-secret", "env:KW_NEW")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "done" in out.stdout
    assert dest.read_text().strip() == ANT_NEW
    req = urllib.request.Request(f"{base}/v1/organizations/api_keys?workspace_id=wrk_e2e",
                                 headers={"x-api-key": ANT_ADMIN, "anthropic-version": "2023-06-01"})
    listed = {k["id"]: k["status"] for k in json.loads(urllib.request.urlopen(req, timeout=5).read())["data"]}
    assert listed == {"apikey_e2e_old": "inactive", "apikey_e2e_new": "active"}
    text = asked.stdout + asked.stderr + out.stdout + out.stderr + kw("rotations", "--json").stdout
    for s in (ANT_OLD, ANT_NEW, ANT_ADMIN):
        assert s not in text and s[-10:] not in text
