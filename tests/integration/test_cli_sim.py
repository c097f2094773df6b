"""`keywatch sim`: the simulator as a tool a user runs. What it prints is what a config needs: the printed base
URLs work with the official SDKs, they are the ones docs/simulator.md gives, and every provider the simulator
mounts has one."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import anthropic
import httpx2
import openai
import pytest

from keywatch.sim.guide import BASE_URLS
from keywatch.sim.routes import route_modules

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "simulator.md"
OPENAI_KEY = "sk-proj-simulated0000000000000000GDYA"
ANT_KEY = "sk-ant-api03-simulated00000000000000000000000000000000000000000000000000000-igAA"


def start(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "keywatch", "sim", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


@pytest.fixture
def running() -> tuple[str, list[str]]:
    proc = start("--port", "0")
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if line.startswith("Stop with"):
            break
    url = re.match(r"keywatch-sim listening on (http://\S+)$", lines[0]).group(1)
    yield url, lines
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0


def printed_base_urls(url: str, lines: list[str]) -> dict[tuple[str, str], str]:
    out = {}
    for line in lines:
        m = re.match(r"  (\S+)\s+(http://\S+)\s+\((.+)\)$", line)
        if m:
            out[(m.group(1), m.group(3))] = m.group(2).removeprefix(url)
    return out


def test_it_prints_every_providers_base_url_as_the_docs_give_them(running):
    url, lines = running
    printed = printed_base_urls(url, lines)
    assert printed == {(p, s): path for p, s, path in BASE_URLS}
    doc = DOC.read_text(encoding="utf-8").split("## Pointing keywatch at it", 1)[1].split("\n## ", 1)[0]
    documented = {(p, s.replace(" (", "(")): v for p, s, v in re.findall(r"^\| `(\w+)` \| (.+?) \| `<sim>([^`]+)`", doc,
                                                                        re.M)}
    assert {(p, path) for (p, _), path in printed.items()} == {(p, v) for (p, _), v in documented.items()}
    for module in route_modules():  # every mounted provider can be reached from a printed base URL
        if getattr(module, "SECRET_STORE", False):
            continue  # a secret store (Key Vault) keywatch reads keys from, not a provider
        mount = module.PREFIX.split("+")[0]
        assert any(mount.startswith(path.split("<")[0].rstrip("/")) or path.startswith(mount)
                   for path in printed.values()), f"no printed base URL for {module.__name__} ({module.PREFIX})"
    control = [line.split()[-1].removeprefix(url) for line in lines if "/_sim/" in line and "curl" not in line]
    assert {"/_sim/keys", "/_sim/latency", "/_sim/stats", "/_sim/health"} <= set(control)


def test_the_printed_urls_work_with_the_sdks(running):
    url, lines = running
    printed = printed_base_urls(url, lines)
    keys = next(line.split()[-1] for line in lines if line.strip().endswith("/_sim/keys"))
    r = httpx2.post(keys, json=[{"secret": OPENAI_KEY, "provider": "openai"},
                                {"secret": ANT_KEY, "provider": "anthropic"}])
    assert r.json()["upserted"] == 2
    models = openai.OpenAI(api_key=OPENAI_KEY, base_url=url + printed[("openai", "base_url")], max_retries=0).models
    assert models.list().data
    ant = anthropic.Anthropic(api_key=ANT_KEY, base_url=url + printed[("anthropic", "base_url (key and account)")],
                              max_retries=0)
    assert ant.models.list().data


def test_an_address_in_use_is_one_line_and_exit_2():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        proc = start("--port", str(s.getsockname()[1]))
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert err.strip().startswith("keywatch: cannot listen on 127.0.0.1:") and "Traceback" not in err
