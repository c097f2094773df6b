"""A real Prometheus against keywatch: every dashboard query and every rule expression evaluates, the core
panels show data, and /metrics passes `promtool check metrics`.

Needs the Debian packages `prometheus` (prometheus, promtool); skipped with the reason when they are missing.
The end-to-end tests also need the daemon (keywatch.daemon) and the provider simulator (keywatch.sim.server).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "config" / "prometheus" / "keywatch-rules.yml"
DASHBOARD = ROOT / "config" / "grafana" / "keywatch-dashboard.json"
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")

needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None or PROMTOOL is None,
    reason="prometheus/promtool are not installed (Debian package `prometheus`)",
)


def _absent(*modules: str) -> str | None:
    """Which module does not exist yet, or None. Only existence is checked here: a module that is there
    but fails to import makes the tests below fail with its error, not skip."""
    for name in modules:
        try:
            spec = importlib.util.find_spec(name)
        except ModuleNotFoundError:
            spec = None
        if spec is None:
            return f"{name} does not exist yet"
    return None


_MISSING_KEYWATCH = _absent("keywatch.daemon", "keywatch.sim.server")
needs_keywatch = pytest.mark.skipif(
    _MISSING_KEYWATCH is not None,
    reason=f"the daemon or the provider simulator is not built yet: {_MISSING_KEYWATCH}",
)


# Panels (title, refId) that must return data once keywatch has probed its keys.
CORE = {
    ("Keys", "A"), ("Usable", "A"), ("Rejected (invalid, forbidden)", "A"), ("Quota exhausted", "A"),
    ("Compromised", "A"), ("keywatch ready", "A"), ("Keys per health per provider", "A"),
    ("Keys by health", "A"), ("Key details", "A"), ("Key details", "B"), ("Key details", "E"),
    ("Key details", "F"), ("Probe latency", "A"), ("Probe latency", "B"), ("Probe latency", "C"),
    ("Probe results", "A"), ("Probe cycle duration", "A"), ("Time since last cycle", "A"),
    ("Oldest probe", "A"), ("Keys by admin state", "A"), ("Instances", "A"),
}

# The keys the end-to-end run watches: name -> (simulator behaviour, expected health, labels, probe mode).
KEYS = {
    "k1": ("healthy", "healthy", {"team": "search", "env": "prod"}, "models"),
    "k2": ("invalid", "invalid", {"team": "infra"}, "models"),
    "k3": ("quota_exhausted", "quota_exhausted", {"team": "infra"}, "completion"),
    "k4": ("rate_limited", "rate_limited", {"team": "search"}, "models"),
}


# -- helpers ---------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # loopback only
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_for(what: str, check, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: the process exited with {proc.returncode}\n{_tail(log)}")
        try:
            result = check()
        except (OSError, ValueError) as exc:  # not listening yet, or not answering JSON yet
            last = exc
        else:
            if result:
                return result
            last = result
        time.sleep(0.3)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})\n{_tail(log)}")


def _tail(log: Path | None, lines: int = 40) -> str:
    if log is None or not log.exists():
        return ""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


class Prometheus:
    def __init__(self, url: str, log: Path) -> None:
        self.url = url
        self.log = log

    def api(self, path: str, **params: str) -> dict:
        query = urllib.parse.urlencode(params)
        status, body = http_get(f"{self.url}/api/v1/{path}" + (f"?{query}" if query else ""), timeout=15)
        data = json.loads(body)
        assert status == 200 and data.get("status") == "success", f"{path} {params}: {status} {data}"
        return data["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def value(self, expr: str) -> float:
        result = self.query(expr)
        assert len(result) == 1, f"{expr}: expected one sample, got {result}"
        return float(result[0]["value"][1])


def start_prometheus(
    tmp: Path, targets: list[str], rule_files: list[Path]
) -> tuple[subprocess.Popen, Prometheus]:
    port = free_port()
    config = tmp / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files: {json.dumps([str(r) for r in rule_files])}\n"
        "scrape_configs:\n  - job_name: keywatch\n"
        f"    static_configs:\n      - targets: {json.dumps(targets)}\n"
    )
    log = tmp / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}",
             f"--storage.tsdb.path={tmp / 'tsdb'}", "--log.level=warn"],
            stdout=out, stderr=subprocess.STDOUT,
        )
    prom = Prometheus(f"http://127.0.0.1:{port}", log)
    wait_for("prometheus /-/ready", lambda: http_get(f"{prom.url}/-/ready", 2)[0] == 200, 30, proc, log)
    return proc, prom


def dashboard_targets() -> list[tuple[str, str, str]]:
    """(panel title, refId, expr) for every query of the dashboard."""
    dash = json.loads(DASHBOARD.read_text())
    out = []
    stack = list(dash["panels"])
    while stack:
        p = stack.pop(0)
        stack.extend(p.get("panels", []))
        out.extend((p["title"], t["refId"], t["expr"]) for t in p.get("targets", []))
    return out


def render(expr: str, variables: dict[str, str]) -> str:
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", variables[name]).replace("$" + name, variables[name])
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


ALL = {"provider": ".*", "label_name": "key", "label_value": ".*", "__rate_interval": "1m",
       "__interval": "15s", "__range": "1h"}


def rule_expressions() -> list[tuple[str, str]]:
    yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the rule file")
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [(r.get("alert") or r["record"], r["expr"]) for g in groups for r in g["rules"]]


def rules_health(prom: Prometheus) -> list[dict]:
    return [r for g in prom.api("rules")["groups"] for r in g["rules"]]


# -- without keywatch: every query is valid PromQL for a real Prometheus ---------------------------
@needs_prometheus
def test_every_query_and_rule_evaluates_on_an_empty_prometheus(tmp_path):
    proc, prom = start_prometheus(tmp_path, ["127.0.0.1:1"], [RULES])
    try:
        for title, ref, expr in dashboard_targets():
            for variables in (ALL, {**ALL, "label_name": "label_team", "label_value": "search|infra"}):
                q = render(expr, variables)
                try:
                    prom.query(q)
                except AssertionError as exc:
                    pytest.fail(f"panel {title!r} ({ref}): {exc}")
        for name, expr in rule_expressions():
            try:
                prom.query(expr)
            except AssertionError as exc:
                pytest.fail(f"rule {name}: {exc}")
        loaded = {r["name"] for r in rules_health(prom)}
        assert loaded == {name for name, _ in rule_expressions()}
        wait_for("every rule evaluated without error",
                 lambda: all(r["health"] == "ok" for r in rules_health(prom)), 20, proc, prom.log)
    finally:
        stop(proc)


# -- with keywatch and the simulator ---------------------------------------------------------------
@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[dict]:
    from keywatch.sim.server import SimulatorThread

    tmp = tmp_path_factory.mktemp("e2e")
    with SimulatorThread() as sim:
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
        lines = []
        for i, (name, (behaviour, _, labels, probe)) in enumerate(KEYS.items()):
            secret = f"sk-proj-e2e{i}{behaviour.replace('_', '')}00000000000000000000{i:04d}"
            sim.set_key(secret, provider="openai", behaviour=behaviour)
            env[f"KW_E2E_{name.upper()}"] = secret
            label_text = ", ".join(f'{k} = "{v}"' for k, v in labels.items())
            lines += [
                "[[keys]]", f'name = "{name}"', 'provider = "openai"',
                f'secret = "env:KW_E2E_{name.upper()}"', f'base_url = "{sim.url.rstrip("/")}/openai/v1"',
                f'probe = "{probe}"',
                f"labels = {{ {label_text} }}", "",
            ]
        port = free_port()
        config = tmp / "keywatch.toml"
        config.write_text(
            "[daemon]\n"
            f'database = "sqlite:///{tmp / "keywatch.db"}"\n'
            f'listen = "127.0.0.1:{port}"\n'
            'log_format = "json"\n\n'
            '[probe]\ninterval = "2s"\nconcurrency = 8\ntimeout = "2s"\n\n'
            # Keys stay as the simulator made them: the built-in policies would disable the invalid
            # one, and the key-down rule rightly ignores keys keywatch disabled on purpose.
            '[safety]\ndefault_policies = "never"\n\n' + "\n".join(lines)
        )
        log = tmp / "keywatch.log"
        with log.open("wb") as out:
            kw = subprocess.Popen([sys.executable, "-m", "keywatch", "run", "-c", str(config)],
                                  cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT)
        prom_proc = None
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for("keywatch /readyz == 200", lambda: http_get(f"{base}/readyz", 2)[0] == 200, 60, kw, log)
            prom_proc, prom = start_prometheus(tmp, [f"127.0.0.1:{port}"], [RULES])
            # Enough history for rate() over 1m: two scrapes with probes between them, every key probed.
            probed = "count(keywatch_key_last_probe_timestamp_seconds) == " + str(len(KEYS))
            wait_for("every key probed and scraped", lambda: prom.query(probed), 60, kw, log)
            rates = "sum(rate(keywatch_probe_duration_seconds_count[1m])) > 0"
            wait_for("probe rates over 1m", lambda: prom.query(rates), 60, kw, log)
            yield {"prom": prom, "keywatch": base, "log": log, "proc": kw}
        finally:
            if prom_proc is not None:
                stop(prom_proc)
            stop(kw)


@needs_prometheus
@needs_keywatch
def test_metrics_pass_promtool_check(stack):
    status, body = http_get(f"{stack['keywatch']}/metrics")
    assert status == 200
    res = subprocess.run([PROMTOOL, "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert res.returncode == 0 and res.stdout + res.stderr == b"", (res.stdout + res.stderr).decode()


@needs_prometheus
@needs_keywatch
def test_keys_reach_the_expected_health(stack):
    prom = stack["prom"]
    got = {r["metric"]["key"]: r["metric"]["health"] for r in prom.query("keywatch_key_health == 1")}
    assert got == {name: health for name, (_, health, _, _) in KEYS.items()}, _tail(stack["log"])


@needs_prometheus
@needs_keywatch
def test_every_panel_query_evaluates_and_core_panels_show_data(stack):
    prom = stack["prom"]
    empty = []
    for title, ref, expr in dashboard_targets():
        result = prom.query(render(expr, ALL))
        if (title, ref) in CORE and not result:
            empty.append(f"{title} ({ref}): {render(expr, ALL)}")
    assert not empty, "core panels without data:\n" + "\n".join(empty)
    assert {t for t, _, _ in dashboard_targets()} >= {t for t, _ in CORE}, "a core panel was renamed"


@needs_prometheus
@needs_keywatch
def test_fleet_panels_count_the_keys(stack):
    prom = stack["prom"]
    exprs = {(t, r): e for t, r, e in dashboard_targets()}
    healths = [h for _, h, _, _ in KEYS.values()]
    assert prom.value(render(exprs["Keys", "A"], ALL)) == len(KEYS)
    usable = sum(h in ("healthy", "rate_limited") for h in healths)
    assert prom.value(render(exprs["Usable", "A"], ALL)) == usable
    assert prom.value(render(exprs["Rejected (invalid, forbidden)", "A"], ALL)) == 1
    assert prom.value(render(exprs["Quota exhausted", "A"], ALL)) == 1
    assert prom.value(render(exprs["Compromised", "A"], ALL)) == 0
    per_provider = prom.query(render(exprs["Keys per health per provider", "A"], ALL))
    assert {r["metric"]["health"]: float(r["value"][1]) for r in per_provider} == {h: 1.0 for h in healths}


@needs_prometheus
@needs_keywatch
def test_label_filter_selects_keys_by_configured_label(stack):
    prom = stack["prom"]
    exprs = {(t, r): e for t, r, e in dashboard_targets()}
    search = {**ALL, "label_name": "label_team", "label_value": "search"}
    assert prom.value(render(exprs["Keys", "A"], search)) == 2
    rows = prom.query(render(exprs["Key details", "A"], search))
    assert {r["metric"]["key"] for r in rows} == {"k1", "k4"}
    # The variables' own queries: label_values(keywatch_key_up, provider) and label_names().
    assert "openai" in prom.api("label/provider/values", **{"match[]": "keywatch_key_up"})
    assert {"label_team", "label_env"} <= set(prom.api("labels"))
    teams = prom.api("label/label_team/values", **{"match[]": "keywatch_key_info"})
    assert set(teams) == {"search", "infra"}


@needs_prometheus
@needs_keywatch
def test_rule_expressions_evaluate_against_real_metrics(stack):
    prom = stack["prom"]
    for _, expr in rule_expressions():
        prom.query(expr)  # asserts success
    key_down = dict(rule_expressions())["KeywatchKeyInvalid"]
    assert {r["metric"]["key"] for r in prom.query(key_down)} == {"k2"}
    quota = dict(rule_expressions())["KeywatchKeyQuotaExhausted"]
    assert {r["metric"]["key"] for r in prom.query(quota)} == {"k3"}
    assert prom.query(dict(rule_expressions())["KeywatchDown"]) == []
    assert prom.query(dict(rule_expressions())["KeywatchProbesStale"]) == []
    wait_for("every rule evaluated without error",
             lambda: all(r["health"] == "ok" for r in rules_health(prom)), 20)
    recorded = prom.query("keywatch:keys:count_by_provider_health == 1")
    assert {r["metric"]["health"] for r in recorded} == {h for _, h, _, _ in KEYS.values()}
