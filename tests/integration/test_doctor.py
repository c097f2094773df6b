"""`keywatch doctor` against the simulator over real HTTP: a healthy key passes every check; an invalid key,
an unreachable base URL, an unresolvable secret reference and a provider whose Date header is ten minutes
off each show as the finding they are, with a fix, and exit 1. The secret never appears in the output."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from keywatch.cli import main
from tests.integration.conftest import free_port, toml_config, unique_secret


def doctor(tmp_path: Path, keys: list[dict], capsys, monkeypatch, env: dict[str, str]) -> tuple[int, dict]:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    cfg = tmp_path / "keywatch.toml"
    cfg.write_text(toml_config(keys, db=tmp_path / "k.db"))
    capsys.readouterr()
    code = main(["doctor", "-c", str(cfg), "--json"])
    out = capsys.readouterr().out
    for v in env.values():
        assert v not in out
    findings: dict = {}
    for f in json.loads(out):
        findings.setdefault(f["check"], []).append(f)
    assert not (tmp_path / "k.db").exists()  # doctor never creates the database
    return code, findings


def key(name: str, base_url: str, secret: str = "env:KW_DOC_KEY") -> dict:
    return {"name": name, "provider": "openai", "secret": secret, "base_url": base_url}


def test_a_healthy_key_passes(sim, tmp_path: Path, capsys, monkeypatch) -> None:
    secret = unique_secret()
    sim.set_key(secret, provider="openai", behaviour="healthy")
    code, f = doctor(tmp_path, [key("good", f"{sim.url}/openai/v1")], capsys, monkeypatch, {"KW_DOC_KEY": secret})
    assert code == 0, f
    assert f["secret"][0]["status"] == "ok" and "sha256:" in f["secret"][0]["detail"]
    assert [x["status"] for x in f["dns"] + f["tcp"]] == ["ok", "ok"] and f["tcp"][0]["ms"] is not None
    assert f["probe"][0]["status"] == "ok" and f["probe"][0]["detail"].startswith("classified healthy (HTTP 200")
    assert f["clock"][0]["status"] == "ok"
    assert f["history"][0]["status"] == "skip"


def test_an_invalid_key_is_classified_with_the_reason_and_a_fix(sim, tmp_path: Path, capsys, monkeypatch) -> None:
    secret = unique_secret()
    sim.set_key(secret, provider="openai", behaviour="invalid")
    code, f = doctor(tmp_path, [key("dead", f"{sim.url}/openai/v1")], capsys, monkeypatch, {"KW_DOC_KEY": secret})
    assert code == 1
    probe = f["probe"][0]
    assert probe["status"] == "fail" and probe["detail"].startswith("classified invalid (HTTP 401")
    assert "rotate" in probe["fix"]


def test_an_unreachable_base_url_fails_at_tcp_and_is_not_probed(tmp_path: Path, capsys, monkeypatch) -> None:
    port = free_port()
    code, f = doctor(tmp_path, [key("far", f"http://127.0.0.1:{port}/v1")], capsys, monkeypatch,
                     {"KW_DOC_KEY": unique_secret()})
    assert code == 1
    assert f["tcp"][0]["status"] == "fail" and "refused" in f["tcp"][0]["detail"] and f["tcp"][0]["fix"]
    assert f["probe"][0]["status"] == "skip" and "not reachable" in f["probe"][0]["detail"]


def test_an_unresolvable_secret_reference_names_it(sim, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("KW_DOC_MISSING", raising=False)
    code, f = doctor(tmp_path, [key("nosecret", f"{sim.url}/openai/v1", "env:KW_DOC_MISSING")], capsys,
                     monkeypatch, {})
    assert code == 1
    assert f["secret"][0]["status"] == "fail" and "KW_DOC_MISSING" in f["secret"][0]["detail"]
    assert "environment" in f["secret"][0]["fix"]
    assert f["probe"][0]["status"] == "skip"


class _Skewed(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        body = b'{"error": {"code": "invalid_api_key", "message": "Incorrect API key"}}'
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def date_time_string(self, timestamp: float | None = None) -> str:
        return format_datetime(datetime.now(UTC) - timedelta(minutes=10), usegmt=True)  # a clock 10 min behind

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def skewed_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Skewed)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_skewed_provider_clock_is_reported(skewed_server: str, tmp_path: Path, capsys, monkeypatch) -> None:
    code, f = doctor(tmp_path, [key("skew", f"{skewed_server}/v1")], capsys, monkeypatch,
                     {"KW_DOC_KEY": unique_secret()})
    assert code == 1
    clock = f["clock"][0]
    assert clock["status"] == "warn" and any(f"+{n} s" in clock["detail"] for n in (599, 600, 601))
    assert "ntp" in clock["fix"]


def _admin_setup(sim, admin_known: bool) -> tuple[dict, str, dict[str, str]]:
    secret, admin = unique_secret(), "sk-admin-" + unique_secret()
    sim.set_key(secret, provider="openai", behaviour="healthy", project_id="proj_doc", key_id="key_doc",
                name="managed")
    if admin_known:
        sim.set_key(admin, "openai", "admin")
    accounts = (f'\n[[accounts]]\nname = "org"\nprovider = "openai"\nadmin_secret = "env:KW_DOC_ADMIN"\n'
                f'base_url = "{sim.url}/openai/v1"\n')
    k = {**key("managed", f"{sim.url}/openai/v1"), "account": "org"}
    return k, accounts, {"KW_DOC_KEY": secret, "KW_DOC_ADMIN": admin}


def _doctor_with(tmp_path: Path, k: dict, extra: str, capsys, monkeypatch, env: dict[str, str]) -> tuple[int, list]:
    for name, v in env.items():
        monkeypatch.setenv(name, v)
    cfg = tmp_path / "keywatch.toml"
    cfg.write_text(toml_config([k], db=tmp_path / "k.db", extra=extra))
    capsys.readouterr()
    code = main(["doctor", "-c", str(cfg), "--json"])
    out = capsys.readouterr().out
    for v in env.values():
        assert v not in out and v[-8:] not in out
    return code, [f for f in json.loads(out) if f["check"] == "permissions"]


def test_the_admin_credential_is_tried_with_a_read_only_call(sim, tmp_path: Path, capsys, monkeypatch) -> None:
    k, accounts, env = _admin_setup(sim, admin_known=True)
    code, perms = _doctor_with(tmp_path, k, accounts, capsys, monkeypatch, env)
    read = [p for p in perms if "read the key's record" in p["detail"]]
    assert code == 0, perms
    assert len(read) == 1 and read[0]["status"] == "ok" and read[0]["detail"].endswith("allowed")
    assert read[0]["ms"] is not None


def test_a_refused_admin_credential_is_a_failed_finding_with_the_fix(sim, tmp_path: Path, capsys,
                                                                    monkeypatch) -> None:
    k, accounts, env = _admin_setup(sim, admin_known=False)  # the simulator does not know this admin key
    code, perms = _doctor_with(tmp_path, k, accounts, capsys, monkeypatch, env)
    read = [p for p in perms if "read the key's record" in p["detail"]]
    assert code == 1
    assert read and read[0]["status"] == "fail" and "refused" in read[0]["detail"]
    assert "admin" in read[0]["fix"]
