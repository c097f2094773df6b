"""Secret stores as destinations, each against the real thing: files on disk with a concurrent reader,
EnvironmentFiles read back by a shell, AWS Secrets Manager on moto's server, Azure Key Vault over TLS with
the azure-keyvault-secrets SDK against the simulator's vault."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from keywatch.domain import Secret
from keywatch.secretstores import BadReference, SecretStoreSettings, StoreUnavailable, open_destination
from keywatch.secretstores.files import parse_env_file, quote_env_value

from .conftest import free_port, moto_server


def token() -> str:
    return str(uuid.uuid4())


# ---- file: -----------------------------------------------------------------------------------------------


async def test_file_pending_promote_keeps_previous_and_0600(tmp_path: Path) -> None:
    path = tmp_path / "openai.key"
    path.write_text("sk-old-value-0001")
    dest = open_destination(f"file:{path}")
    t = token()
    await dest.write_pending(Secret("sk-new-value-0002"), token=t)
    assert path.read_text() == "sk-old-value-0001"  # applications still read the old key
    assert await dest.read("pending") == Secret("sk-new-value-0002")
    assert stat.S_IMODE((tmp_path / "openai.key.pending").stat().st_mode) == 0o600
    assert (await dest.stages())["pending"] == t

    await dest.promote(token=t)
    await dest.promote(token=t)  # a repeat after a crash changes nothing
    assert path.read_text() == "sk-new-value-0002"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert await dest.read("previous") == Secret("sk-old-value-0001")
    assert await dest.read("pending") is None
    assert (await dest.stages()) == {"current": t, "previous": "unmanaged"}

    # a second rotation: the first one's value becomes previous, its token too
    t2 = token()
    await dest.write_pending(Secret("sk-third-value-03"), token=t2)
    await dest.write_pending(Secret("sk-third-value-03"), token=t2)  # same token: no-op
    await dest.promote(token=t2)
    assert await dest.read("previous") == Secret("sk-new-value-0002")
    assert (await dest.stages()) == {"current": t2, "previous": t}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


async def test_file_same_token_other_value_is_refused_and_discard_rolls_back(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_text("sk-old-value-0001")
    dest = open_destination(f"file:{path}")
    t = token()
    await dest.write_pending(Secret("sk-new-value-0002"), token=t)
    with pytest.raises(StoreUnavailable) as exc:
        await dest.write_pending(Secret("sk-other-value-03"), token=t)
    assert "sk-" not in str(exc.value) and str(path) in str(exc.value)

    await dest.discard_pending(token=t)
    await dest.discard_pending(token=t)  # idempotent
    assert await dest.read("pending") is None
    assert path.read_text() == "sk-old-value-0001"
    with pytest.raises(StoreUnavailable):
        await dest.promote(token=t)  # nothing pending any more: no promote of a discarded value
    assert path.read_text() == "sk-old-value-0001"


async def test_file_crash_between_previous_and_switch_keeps_the_old_value_as_previous(tmp_path: Path) -> None:
    """promote() repeated after stopping right after step 1 (previous written) must not copy the new value
    into previous."""
    path = tmp_path / "k"
    path.write_text("sk-old-value-0001")
    dest = open_destination(f"file:{path}")
    t = token()
    await dest.write_pending(Secret("sk-new-value-0002"), token=t)
    await dest.promote(token=t)
    # simulate the crash after the switch but before the bookkeeping: pending back, stages say pending
    (tmp_path / "k.pending").write_text("sk-new-value-0002")
    (tmp_path / "k.stages").write_text(
        f'{{"current": null, "pending": "{t}", "promoting": "{t}", "previous_candidate": null}}'
    )
    await dest.promote(token=t)
    assert path.read_text() == "sk-new-value-0002"
    assert await dest.read("previous") == Secret("sk-old-value-0001")


def test_file_concurrent_reader_never_sees_a_partial_file(tmp_path: Path) -> None:
    path = tmp_path / "k"
    values = [f"sk-{i:04d}-" + "x" * 4000 for i in range(2)]  # larger than one write, smaller than a page x2
    path.write_text(values[0])
    dest = open_destination(f"file:{path}")
    stop = threading.Event()
    seen: set[str] = set()
    bad: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                text = path.read_text()
            except FileNotFoundError:
                bad.append("missing")
                continue
            if text not in values:
                bad.append(f"partial ({len(text)} chars)")
            seen.add(text)

    th = threading.Thread(target=reader)
    th.start()
    try:
        for i in range(60):
            t = token()
            asyncio.run(dest.write_pending(Secret(values[(i + 1) % 2]), token=t))
            asyncio.run(dest.promote(token=t))
    finally:
        stop.set()
        th.join()
    assert bad == []
    assert seen == set(values)


async def test_file_store_down_names_the_ref_never_the_value(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "k"
    dest = open_destination(f"file:{missing}")
    with pytest.raises(StoreUnavailable) as exc:
        await dest.write_pending(Secret("sk-secret-value-9"), token=token())
    assert str(missing) in str(exc.value)
    assert "sk-secret" not in str(exc.value)
    assert exc.value.permanent


def test_bad_references_say_what_is_wrong() -> None:
    with pytest.raises(BadReference, match="absolute path"):
        open_destination("file:relative/k")
    with pytest.raises(BadReference, match="VAR"):
        open_destination("envfile:/etc/app.env")
    with pytest.raises(BadReference, match="unknown destination scheme"):
        open_destination("vault:secret/x")


# ---- envfile: --------------------------------------------------------------------------------------------


def _shell_read(path: Path, var: str) -> str:
    """An independent reader: a POSIX shell sourcing the file. For the forms quote_env_value writes (bare
    safe characters, '...' verbatim, "..." with \\ " ` $ escaped) shell and systemd.exec(5) agree."""
    out = subprocess.run(
        ["sh", "-c", f'set -a; . "$1"; printf %s "${var}"', "sh", str(path)],
        capture_output=True, text=True, timeout=10, check=True, env={"PATH": os.environ.get("PATH", "")},
    )
    return out.stdout


@pytest.mark.parametrize("value", [
    "sk-proj-AbC123_-xyz", "with space and $dollar", "it's \"quoted\" `tick` \\ back $HOME", "a#hash;semi",
])
async def test_envfile_values_round_trip_through_systemd_parser_and_shell(tmp_path: Path, value: str) -> None:
    path = tmp_path / "app.env"
    path.write_text("# managed by hand\nOTHER='keep me'\nAPI_KEY=old\n")
    dest = open_destination(f"envfile:{path}#API_KEY")
    t = token()
    await dest.write_pending(Secret(value), token=t, fields={"access_key_id": "AKIAEXAMPLE"})
    await dest.promote(token=t)
    text = path.read_text()
    assert text.startswith("# managed by hand\nOTHER='keep me'\n")  # other lines as they were
    parsed = parse_env_file(text)
    assert parsed == {"OTHER": "keep me", "API_KEY": value, "ACCESS_KEY_ID": "AKIAEXAMPLE"}
    assert _shell_read(path, "API_KEY") == value
    assert _shell_read(path, "OTHER") == "keep me"
    assert await dest.read() == Secret(value)
    assert await dest.read("previous") == Secret("old")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_systemd_parser_follows_systemd_exec_rules() -> None:
    """The examples of systemd.exec(5) EnvironmentFile= and env-file.c's behaviour."""
    text = (
        "# comment\n; also comment\nnot an assignment\n"
        "A=  spaced value  \n"
        "B='single $x \\n verbatim'\n"
        'C="double \\"q\\" \\$x \\\\ \\n kept"\n'
        "D=one\\\ntwo\n"
        'E="multi\nline"\n'
        "F=back\\\\slash\n"
    )
    assert parse_env_file(text) == {
        "A": "spaced value",
        "B": "single $x \\n verbatim",
        "C": 'double "q" $x \\ \\n kept',
        "D": "onetwo",
        "E": "multi\nline",
        "F": "back\\slash",
    }
    assert quote_env_value("plain-Key_1") == "plain-Key_1"
    assert parse_env_file("X=" + quote_env_value("it's $y") + "\n") == {"X": "it's $y"}


# ---- aws-sm: (moto's server) -----------------------------------------------------------------------------

AWS_REGION = "us-east-1"


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    pytest.importorskip("boto3", reason="boto3 is needed for aws-sm: (pip install keywatch[aws])")
    pytest.importorskip("moto.server", reason="moto[server] is needed to run Secrets Manager locally")
    old = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ["AWS_ACCESS_KEY_ID"] = "AKIAIOSFODNN7EXAMPLE"
    os.environ["AWS_SECRET_ACCESS_KEY"] = "x" * 40
    try:
        with moto_server() as url:
            yield url
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def sm(moto_url: str):
    import boto3

    return boto3.client("secretsmanager", endpoint_url=moto_url, region_name=AWS_REGION,
                        aws_access_key_id="AKIAIOSFODNN7EXAMPLE", aws_secret_access_key="x" * 40)


def aws_settings(url: str) -> SecretStoreSettings:
    return SecretStoreSettings.model_validate({"aws": {"endpoint_url": url, "region": AWS_REGION, "timeout": 5}})


def labels(sm, name: str) -> dict[str, list[str]]:
    """Version id -> staging labels, read back from Secrets Manager (versions without a label dropped)."""
    stages = sm.describe_secret(SecretId=name)["VersionIdsToStages"]
    return {v: sorted(ls) for v, ls in stages.items() if ls}


def current(sm, name: str) -> str:
    """What an application reads. The stage is named explicitly: moto answers a get without VersionStage from
    the version that was last put as AWSCURRENT (update_secret_version_stage does not change it), where AWS
    answers AWSCURRENT."""
    return sm.get_secret_value(SecretId=name, VersionStage="AWSCURRENT")["SecretString"]


async def test_aws_staging_labels_follow_awss_rotation_protocol(moto_url: str, sm) -> None:
    name = f"app/openai-{uuid.uuid4().hex[:8]}"
    first = sm.create_secret(Name=name, SecretString="sk-old-value-0001")["VersionId"]
    dest = open_destination(f"aws-sm:{name}", aws_settings(moto_url))
    t = token()
    await dest.write_pending(Secret("sk-new-value-0002"), token=t)
    assert labels(sm, name) == {first: ["AWSCURRENT"], t: ["AWSPENDING"]}
    assert current(sm, name) == "sk-old-value-0001"
    assert await dest.read("pending") == Secret("sk-new-value-0002")

    await dest.write_pending(Secret("sk-new-value-0002"), token=t)  # the same token: no new version
    assert len(sm.list_secret_version_ids(SecretId=name)["Versions"]) == 2

    await dest.promote(token=t)
    assert labels(sm, name) == {first: ["AWSPREVIOUS"], t: ["AWSCURRENT"]}
    await dest.promote(token=t)  # repeated after a crash: nothing moves
    assert labels(sm, name) == {first: ["AWSPREVIOUS"], t: ["AWSCURRENT"]}
    assert current(sm, name) == "sk-new-value-0002"
    assert await dest.read("previous") == Secret("sk-old-value-0001")
    assert await dest.stages() == {"current": t, "previous": first}

    t2 = token()  # the next rotation: the first rotation's version becomes AWSPREVIOUS
    await dest.write_pending(Secret("sk-third-value-03"), token=t2)
    await dest.promote(token=t2)
    assert labels(sm, name) == {t: ["AWSPREVIOUS"], t2: ["AWSCURRENT"]}


async def test_aws_discard_before_promote_leaves_current_alone(moto_url: str, sm) -> None:
    name = f"app/k-{uuid.uuid4().hex[:8]}"
    first = sm.create_secret(Name=name, SecretString="sk-old-value-0001")["VersionId"]
    dest = open_destination(f"aws-sm:{name}", aws_settings(moto_url))
    t = token()
    await dest.write_pending(Secret("sk-new-value-0002"), token=t)
    await dest.discard_pending(token=t)
    await dest.discard_pending(token=t)
    assert labels(sm, name) == {first: ["AWSCURRENT"]}
    assert await dest.read("pending") is None
    assert await dest.read() == Secret("sk-old-value-0001")
    # a new attempt of the same rotation labels its version again (put is idempotent per token)
    await dest.write_pending(Secret("sk-new-value-0002"), token=t)
    assert labels(sm, name) == {first: ["AWSCURRENT"], t: ["AWSPENDING"]}
    with pytest.raises(StoreUnavailable, match="different value") as exc:
        await dest.write_pending(Secret("sk-other-value-03"), token=t)
    assert "sk-" not in str(exc.value)


async def test_aws_same_token_with_other_value_is_refused(moto_url: str, sm) -> None:
    name = f"app/k-{uuid.uuid4().hex[:8]}"
    sm.create_secret(Name=name, SecretString="sk-old-value-0001")
    dest = open_destination(f"aws-sm:{name}", aws_settings(moto_url))
    t = token()
    await dest.write_pending(Secret("sk-new-value-0002"), token=t)
    await dest.discard_pending(token=t)
    with pytest.raises(StoreUnavailable, match="different value") as exc:
        await dest.write_pending(Secret("sk-other-value-03"), token=t)
    assert "sk-" not in str(exc.value) and name in str(exc.value)


async def test_aws_json_field_read_modify_write_keeps_other_fields(moto_url: str, sm) -> None:
    name = f"app/creds-{uuid.uuid4().hex[:8]}"
    sm.create_secret(Name=name, SecretString=json.dumps(
        {"username": "svc", "api_key": "sk-old-value-0001", "region": "eu-west-1"}))
    dest = open_destination(f"aws-sm:{name}#api_key", aws_settings(moto_url))
    assert await dest.read() == Secret("sk-old-value-0001")
    t = token()
    await dest.write_pending(Secret("sk-new-value-0002"), token=t, fields={"access_key_id": "AKIANEW"})
    await dest.promote(token=t)
    assert json.loads(current(sm, name)) == {
        "username": "svc", "api_key": "sk-new-value-0002", "region": "eu-west-1", "access_key_id": "AKIANEW",
    }
    prev = json.loads(sm.get_secret_value(SecretId=name, VersionStage="AWSPREVIOUS")["SecretString"])
    assert prev["api_key"] == "sk-old-value-0001"
    assert await dest.read("previous") == Secret("sk-old-value-0001")


async def test_aws_errors_name_the_ref_never_the_value(moto_url: str, sm) -> None:
    name = f"app/plain-{uuid.uuid4().hex[:8]}"
    sm.create_secret(Name=name, SecretString="sk-not-json-value-1")
    with pytest.raises(StoreUnavailable, match="not a JSON object") as exc:
        await open_destination(f"aws-sm:{name}#api_key", aws_settings(moto_url)).read()
    assert "sk-not-json" not in str(exc.value)
    with pytest.raises(StoreUnavailable, match="does not exist") as exc:
        await open_destination("aws-sm:app/missing", aws_settings(moto_url)).write_pending(
            Secret("sk-new-value-0002"), token=token())
    assert exc.value.permanent and "aws-sm:app/missing" in str(exc.value)
    down = open_destination(f"aws-sm:{name}", aws_settings(f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(StoreUnavailable) as exc:
        await down.read()
    assert not exc.value.permanent and f"aws-sm:{name}" in str(exc.value)


# ---- aws-sm: as a key's secret source, in the daemon --------------------------------------------------------


async def test_daemon_reload_rereads_aws_sm_and_keeps_the_value_through_an_outage(tmp_path: Path) -> None:
    """SIGHUP's reload reads the store again; with the store down the key keeps its running value, the
    reload still applies, and an alert `secret_store:<key>` reaches the webhook, naming the ref only."""
    pytest.importorskip("boto3", reason="boto3 is needed for aws-sm: (pip install keywatch[aws])")
    pytest.importorskip("moto.server", reason="moto[server] is needed to run Secrets Manager locally")
    import boto3
    from moto.server import ThreadedMotoServer
    from prometheus_client import CollectorRegistry

    from keywatch.daemon import Daemon
    from keywatch.metrics import Metrics
    from keywatch.sim import Simulator
    from tests.integration.conftest import toml_config
    from tests.integration.test_notify_delivery import Receiver, wait_until

    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    url = f"http://127.0.0.1:{port}"
    creds = {"aws_access_key_id": "AKIAIOSFODNN7EXAMPLE", "aws_secret_access_key": "x" * 40}
    env = {"AWS_ACCESS_KEY_ID": creds["aws_access_key_id"], "AWS_SECRET_ACCESS_KEY": creds["aws_secret_access_key"]}
    old_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    sm = boto3.client("secretsmanager", endpoint_url=url, region_name=AWS_REGION, **creds)
    name = f"app/daemon-{uuid.uuid4().hex[:8]}"
    first, second = "sk-proj-" + "a" * 40 + "0001", "sk-proj-" + "b" * 40 + "0002"
    sm.create_secret(Name=name, SecretString=json.dumps({"api_key": first}))
    sim = Simulator()
    await sim.start()
    rx = await Receiver().start()
    daemon: Daemon | None = None
    try:
        keys = [{"name": "k1", "provider": "openai", "secret": f"aws-sm:{name}#api_key",
                 "base_url": f"{sim.url}/openai/v1"}]
        cfg = tmp_path / "keywatch.toml"
        (tmp_path / "hook_url").write_text(rx.url("/hook"))
        cfg.write_text(
            toml_config(keys, db=tmp_path / "k.db", interval="1h")
            + f'\n[secret_stores.aws]\nendpoint_url = "{url}"\nregion = "{AWS_REGION}"\ntimeout = 2\n'
            + '\n[alerts]\nretry_base = "50ms"\nretry_max = "100ms"\ngroup_wait = "0s"\n'
            + f'[[alerts.sinks]]\nname = "hook"\ntype = "webhook"\nurl = "file:{tmp_path / "hook_url"}"\n'
        )
        daemon = Daemon(cfg, metrics=Metrics(CollectorRegistry()))
        await daemon.start()
        assert daemon.inventory is not None
        assert daemon.inventory.key("k1").secret == Secret(first)

        sm.put_secret_value(SecretId=name, SecretString=json.dumps({"api_key": second}))  # a new AWSCURRENT
        assert await daemon.reload()
        assert daemon.inventory.key("k1").secret == Secret(second)

        moto.stop()  # the store goes down
        moto = None
        assert await daemon.reload()  # the reload applies; only the key's secret stays as it was
        assert daemon.inventory.key("k1").secret == Secret(second)
        assert "k1" in daemon.inventory.stale_secrets

        def firing() -> list[dict]:
            return [a for r in rx.accepted() for a in r.json()["alerts"] if a["identity"] == "secret_store:k1"]

        await wait_until(lambda: firing(), "the secret_store alert at the webhook")
        body = json.dumps(firing())
        assert name in body and "aaaa" not in body and "bbbb" not in body  # names the ref, never the value
    finally:
        if daemon is not None:
            await daemon.shutdown()
        await rx.stop()
        await sim.stop()
        if moto is not None:
            moto.stop()
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_first_start_with_the_store_down_is_a_config_error_naming_key_and_ref(tmp_path: Path) -> None:
    from keywatch.settings.loader import ConfigError, load_inventory
    from tests.integration.conftest import toml_config

    ref = f"aws-sm:app/never-read-{uuid.uuid4().hex[:8]}"
    cfg = tmp_path / "keywatch.toml"
    cfg.write_text(
        toml_config([{"name": "k9", "provider": "openai", "secret": ref}], db=tmp_path / "k.db")
        + f'\n[secret_stores.aws]\nendpoint_url = "http://127.0.0.1:{free_port()}"\ntimeout = 1\n'
    )
    with pytest.raises(ConfigError) as exc:
        load_inventory(cfg)
    text = str(exc.value)
    assert "keys[0].secret" in text and "'k9'" in text and ref in text


# ---- azure-kv: (the simulator's Key Vault over TLS, the real SDK) -----------------------------------------


def make_tls(tmp: Path) -> tuple[Path, Path, Path]:
    """A CA and a certificate for 127.0.0.1 signed by it, made now: (ca.pem, cert.pem, key.pem)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keywatch test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(hours=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(hours=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = tmp / "ca.pem", tmp / "cert.pem", tmp / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


class StaticToken:
    """An async TokenCredential that hands out one fixed token and records the scopes asked for."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.scopes: list[tuple[str, ...]] = []

    async def get_token(self, *scopes: str, **kwargs):
        from azure.core.credentials import AccessToken

        self.scopes.append(scopes)
        return AccessToken(self.token, int(time.time()) + 3600)

    async def get_token_info(self, *scopes: str, options=None):
        from azure.core.credentials import AccessTokenInfo

        self.scopes.append(scopes)
        return AccessTokenInfo(self.token, int(time.time()) + 3600)

    async def close(self) -> None:
        pass

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        pass


@pytest.fixture
async def vault(tmp_path: Path):
    pytest.importorskip("azure.keyvault.secrets", reason="azure-keyvault-secrets is needed (keywatch[azure])")
    import ssl

    from aiohttp import web

    from keywatch.sim import SimState, build_app

    ca, cert, key = make_tls(tmp_path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    state = SimState()
    state.provider_data("keyvault")["tokens"] = {"kv-test-token-0001"}
    runner = web.AppRunner(build_app(state), access_log=None)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx)
    await site.start()
    settings = SecretStoreSettings.model_validate(
        {"azure": {"ca_bundle": str(ca), "verify_challenge_resource": False, "timeout": 5}})
    try:
        yield f"https://127.0.0.1:{port}", settings, state
    finally:
        await runner.cleanup()


async def test_key_vault_pending_is_not_the_latest_until_promote(vault) -> None:
    from azure.keyvault.secrets.aio import SecretClient

    url, settings, state = vault
    cred = StaticToken("kv-test-token-0001")
    app_client = SecretClient(url, cred, verify_challenge_resource=False, connection_verify=settings.azure.ca_bundle)
    async with app_client:  # what an application does: read the latest version with the SDK
        first = await app_client.set_secret("openai-prod", "sk-old-value-0001")
        dest = open_destination(f"azure-kv:{url}/openai-prod", settings, azure_credential=cred)
        t = token()
        await dest.write_pending(Secret("sk-new-value-0002"), token=t)
        await dest.write_pending(Secret("sk-new-value-0002"), token=t)  # same token: no new version
        assert (await app_client.get_secret("openai-prod")).value == "sk-old-value-0001"
        assert await dest.read("pending") == Secret("sk-new-value-0002")
        held = state.provider_data("keyvault")["vaults"][url.removeprefix("https://")]
        assert len(held["openai-prod--keywatch-pending"]) == 1

        await dest.promote(token=t)
        await dest.promote(token=t)  # repeated: no third version
        latest = await app_client.get_secret("openai-prod")
        assert latest.value == "sk-new-value-0002"
        versions = [v async for v in app_client.list_properties_of_secret_versions("openai-prod")]
        assert len(versions) == 2  # the old version is kept
        assert (await app_client.get_secret("openai-prod", first.properties.version)).value == "sk-old-value-0001"
        assert await dest.read("previous") == Secret("sk-old-value-0001")
        assert await dest.read("pending") is None
        assert await dest.stages() == {"current": latest.properties.version, "previous": first.properties.version}
    assert cred.scopes and all(s == ("https://vault.azure.net/.default",) for s in cred.scopes)  # the challenge's


async def test_key_vault_discard_json_field_and_errors(vault) -> None:
    url, settings, state = vault
    cred = StaticToken("kv-test-token-0001")
    dest = open_destination(f"azure-kv:{url}/creds#api_key", settings, azure_credential=cred)
    from azure.keyvault.secrets.aio import SecretClient

    async with SecretClient(url, cred, verify_challenge_resource=False,
                            connection_verify=settings.azure.ca_bundle) as c:
        await c.set_secret("creds", json.dumps({"user": "svc", "api_key": "sk-old-value-0001"}))
        t = token()
        await dest.write_pending(Secret("sk-new-value-0002"), token=t, fields={"deployment": "gpt-4o"})
        await dest.discard_pending(token=t)
        await dest.discard_pending(token=t)
        assert await dest.read("pending") is None
        with pytest.raises(StoreUnavailable, match="no pending value"):
            await dest.promote(token=t)
        t2 = token()
        await dest.write_pending(Secret("sk-third-value-03"), token=t2, fields={"deployment": "gpt-4o"})
        await dest.promote(token=t2)
        assert json.loads((await c.get_secret("creds")).value) == {
            "user": "svc", "api_key": "sk-third-value-03", "deployment": "gpt-4o"}

    # a token the vault does not accept, and a vault that is down: named by ref, never a value
    with pytest.raises(StoreUnavailable) as exc:
        await open_destination(f"azure-kv:{url}/creds#api_key", settings,
                               azure_credential=StaticToken("kv-wrong-token")).read()
    assert exc.value.permanent and "creds" in str(exc.value) and "sk-" not in str(exc.value)
    state.provider_data("keyvault")["down"] = True
    with pytest.raises(StoreUnavailable) as exc:
        await dest.read()
    assert not exc.value.permanent and "sk-" not in str(exc.value)


async def test_key_vault_challenge_resource_is_checked_by_default(vault) -> None:
    """The vault's challenge names vault.azure.net, not 127.0.0.1: the SDK refuses unless told not to check."""
    url, settings, _ = vault
    strict = SecretStoreSettings.model_validate({"azure": {"ca_bundle": settings.azure.ca_bundle}})
    with pytest.raises(StoreUnavailable, match="refused by the SDK") as exc:
        await open_destination(f"azure-kv:{url}/x", strict, azure_credential=StaticToken("kv-test-token-0001")).read()
    assert exc.value.permanent


@pytest.mark.slow
def test_sighup_to_a_daemon_process_rereads_aws_sm_and_survives_the_store_going_down(sim, tmp_path: Path) -> None:
    """A real `keywatch run` process: the first value is rejected by the provider, the new AWSCURRENT read at
    SIGHUP is healthy; with Secrets Manager gone, the next SIGHUP keeps that value and logs why."""
    pytest.importorskip("boto3", reason="boto3 is needed for aws-sm: (pip install keywatch[aws])")
    pytest.importorskip("moto.server", reason="moto[server] is needed to run Secrets Manager locally")
    import signal

    import boto3
    from moto.server import ThreadedMotoServer

    from tests.integration.conftest import toml_config, unique_secret
    from tests.integration.test_daemon import DaemonProc, base_env, http_get, wait_for

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    moto.start()
    host, mport = moto.get_host_and_port()
    url = f"http://{host}:{mport}"
    creds = {"AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE", "AWS_SECRET_ACCESS_KEY": "x" * 40}
    sm = boto3.client("secretsmanager", endpoint_url=url, region_name=AWS_REGION,
                      aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"])
    old, new = unique_secret(), unique_secret()
    sim.set_key(old, provider="openai", behaviour="invalid")
    sim.set_key(new, provider="openai", behaviour="healthy")
    name = f"app/proc-{uuid.uuid4().hex[:8]}"
    sm.create_secret(Name=name, SecretString=old)
    port = free_port()
    keys = [{"name": "k1", "provider": "openai", "secret": f"aws-sm:{name}", "base_url": f"{sim.url}/openai/v1"}]
    cfg = tmp_path / "keywatch.toml"
    cfg.write_text(toml_config(keys, db=tmp_path / "k.db", listen=f"127.0.0.1:{port}", interval="1s")
                   + f'\n[secret_stores.aws]\nendpoint_url = "{url}"\nregion = "{AWS_REGION}"\ntimeout = 2\n')
    d = DaemonProc(cfg, base_env(**creds), port)
    up = 'keywatch_key_up{key="k1",provider="openai"}'
    try:
        wait_for(d.ready, what="/readyz 200")
        wait_for(lambda: f"{up} 0.0" in http_get(d.url("/metrics"))[1], what="the old value probed invalid")

        sm.put_secret_value(SecretId=name, SecretString=new)  # a new AWSCURRENT
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: f"{up} 1.0" in http_get(d.url("/metrics"))[1], what="the new value read at SIGHUP")

        moto.stop()
        moto = None
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "secret_store_unavailable" in d.logs(), what="the store outage logged")
        time.sleep(1.5)  # a probe cycle after the reload
        assert d.proc.poll() is None
        assert f"{up} 1.0" in http_get(d.url("/metrics"))[1]  # still the value read before
        assert 'keywatch_config_reloads_total{result="applied"} 2.0' in http_get(d.url("/metrics"))[1]
    finally:
        code = d.stop()
        if moto is not None:
            moto.stop()
    logs = d.logs()
    assert code == 0, logs
    assert f"aws-sm:{name}" in logs
    assert old not in logs and new not in logs and old[8:20] not in logs
