"""Operations artefacts: the systemd unit, the install guide, the Prometheus rules and the Grafana dashboard.

Tests that need a tool this machine lacks (systemd-analyze, promtool) are skipped with the reason.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "keywatch.service"
RULES = ROOT / "config" / "prometheus" / "keywatch-rules.yml"
RULE_TESTS = ROOT / "config" / "prometheus" / "keywatch-rules.test.yml"
PROM_EXAMPLE = ROOT / "config" / "prometheus" / "prometheus.example.yml"
DASHBOARD = ROOT / "config" / "grafana" / "keywatch-dashboard.json"
GUIDE = ROOT / "docs" / "operations.md"
GUIDE_HEADING = "## Install as a systemd service"
EXEC_START = "/opt/keywatch/bin/keywatch run -c /etc/keywatch/keywatch.toml"
MAX_EXPOSURE = 2.0

# The metric names keywatch exposes (the contract the rules and the dashboard are written against).
METRICS = {
    "keywatch_key_up", "keywatch_key_health", "keywatch_key_last_probe_timestamp_seconds",
    "keywatch_probe_duration_seconds", "keywatch_probes_total", "keywatch_key_ratelimit_remaining",
    "keywatch_build_info", "keywatch_key_info", "keywatch_key_compromised", "keywatch_keys_by_health",
    "keywatch_keys_by_admin_state", "keywatch_keys_compromised",
    "keywatch_ready", "keywatch_cycle_duration_seconds", "keywatch_last_cycle_timestamp_seconds",
    "keywatch_key_admin_state", "keywatch_actions_total", "keywatch_provider_outage", "keywatch_pool_size",
    "keywatch_alerts_total", "keywatch_alerts_pending", "keywatch_sink_up", "keywatch_key_spend_usd",
    "keywatch_key_tokens", "keywatch_budget_limit_usd", "keywatch_budget_used_ratio",
    "keywatch_budget_exhaustion_forecast_seconds", "keywatch_account_balance",
    "keywatch_usage_last_success_timestamp_seconds",
    "keywatch_rotations_total", "keywatch_rotation_in_progress", "keywatch_key_rotation_due_timestamp_seconds",
    "keywatch_key_age_seconds",
    "keywatch_leak_reports_total", "keywatch_leak_requests_refused_total", "keywatch_containment_seconds",
    "keywatch_containment_blocked_total", "keywatch_leader",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


# -- helpers ---------------------------------------------------------------------------------------
def unit_settings(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every setting of a unit file, in order."""
    out, section = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def unit_values(key: str) -> list[str]:
    return [v for _, k, v in unit_settings(UNIT.read_text()) if k == key]


def unit_paths() -> set[str]:
    """Every file system path the unit refers to, with directory settings and specifiers expanded."""
    paths: set[str] = set()
    for _, key, value in unit_settings(UNIT.read_text()):
        if key in ("Description", "Documentation"):
            continue
        if key == "StateDirectory":
            paths.update(f"/var/lib/{d}" for d in value.split())
            continue
        if key == "ConfigurationDirectory":
            paths.update(f"/etc/{d}" for d in value.split())
            continue
        value = value.replace("%S", "/var/lib").replace("%E", "/etc")
        for m in re.finditer(r"(?:^|[\s=:])(/[A-Za-z0-9._/\-]+)", value):
            paths.add(m.group(1).rstrip("/"))
    return paths


def guide_text() -> str:
    """The install guide: the section of docs/operations.md from its heading to the next `## ` heading."""
    text = GUIDE.read_text() if GUIDE.exists() else ""
    if GUIDE_HEADING not in text:
        pytest.fail(f"no install guide: docs/operations.md has no {GUIDE_HEADING!r} section")
    section = text.split(GUIDE_HEADING, 1)[1]
    end = re.search(r"^## ", section, flags=re.M)
    return GUIDE_HEADING + (section[: end.start()] if end else section)


def code_blocks(markdown: str) -> str:
    return "\n".join(re.findall(r"^```[a-z]*\n(.*?)^```", markdown, flags=re.M | re.S))


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed on this machine")
    return path


def iter_panels(panels: list[dict]) -> list[dict]:
    out = []
    for p in panels:
        out.append(p)
        out.extend(iter_panels(p.get("panels", [])))
    return out


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(keywatch_[a-z0-9_]+)\b", expr))


def contract_name(name: str) -> bool:
    if name in METRICS:
        return True
    return any(name.endswith(s) and name[: -len(s)] in METRICS for s in HISTOGRAM_SUFFIXES)


# -- the systemd unit ------------------------------------------------------------------------------
def test_unit_has_the_required_settings():
    settings = {k: v for _, k, v in unit_settings(UNIT.read_text())}
    assert settings["Type"] == "notify"
    assert settings["ExecStart"] == EXEC_START
    assert "WatchdogSec" in settings
    assert settings["Restart"] == "on-failure"
    assert settings.get("DynamicUser") == "yes" or settings.get("User")
    assert settings["StateDirectory"] == "keywatch"
    assert settings["ConfigurationDirectory"] == "keywatch"
    assert unit_values("LoadCredential"), "admin keys are passed with LoadCredential="
    assert re.search(r"\bkill -(HUP|s HUP)\b.*\$MAINPID", settings["ExecReload"])
    assert settings["MemoryDenyWriteExecute"] == "yes"
    assert settings["ProtectSystem"] == "strict"
    families = set(settings["RestrictAddressFamilies"].split())
    assert {"AF_INET", "AF_INET6", "AF_UNIX"} <= families, "outbound HTTPS, the listen socket and sd_notify"
    assert "PrivateNetwork" not in settings or settings["PrivateNetwork"] == "no"


def _verify_root(tmp_path: Path, unit_text: str) -> Path:
    """A minimal root for `systemd-analyze verify --root`: the host's unit files, our unit and a stub for
    executable the unit runs (this machine has no /opt/keywatch; the guide installs it, tested below)."""
    root = tmp_path / "root"
    for units in ("/usr/lib/systemd/system", "/lib/systemd/system"):
        if Path(units).is_dir():
            shutil.copytree(units, root / "usr/lib/systemd/system", symlinks=True)
            break
    (root / "usr/bin").mkdir(parents=True, exist_ok=True)
    for link in ("bin", "sbin", "lib"):
        (root / link).symlink_to(f"usr/{link}")
    (root / "usr/sbin").mkdir(exist_ok=True)
    (root / "usr/lib").mkdir(exist_ok=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system/keywatch.service").write_text(unit_text)
    for _, key, value in unit_settings(unit_text):
        if key.startswith("Exec"):
            exe = value.lstrip("-@:+!").split()[0]
            stub = root / exe.lstrip("/")
            if not stub.exists():
                stub.parent.mkdir(parents=True, exist_ok=True)
                stub.write_text("#!/bin/sh\nexit 0\n")
                stub.chmod(0o755)
    return root


def _verify(tmp_path: Path, unit_text: str) -> subprocess.CompletedProcess:
    tool = require("systemd-analyze")
    root = _verify_root(tmp_path, unit_text)
    return subprocess.run([tool, "verify", f"--root={root}", "keywatch.service"],
                          capture_output=True, text=True, timeout=60)


def test_systemd_analyze_verify_is_clean(tmp_path):
    res = _verify(tmp_path, UNIT.read_text())
    assert res.returncode == 0, res.stderr
    assert res.stderr == "", res.stderr


def test_verify_harness_reports_a_bad_setting(tmp_path):
    """The clean result above means something: the same harness reports an unknown or bad setting."""
    bad = UNIT.read_text().replace("[Service]\n", "[Service]\nRestartt=always\nRestart=sometimes\n", 1)
    res = _verify(tmp_path, bad)
    assert "Restartt" in res.stderr and "sometimes" in res.stderr, res.stderr


def test_security_exposure_is_low():
    tool = require("systemd-analyze")
    res = subprocess.run([tool, "security", "--offline=yes", str(UNIT)], capture_output=True, text=True,
                         timeout=60)
    m = re.search(r"Overall exposure level for keywatch\.service: ([0-9.]+)", res.stdout + res.stderr)
    assert m, res.stdout + res.stderr
    assert float(m.group(1)) <= MAX_EXPOSURE, res.stdout


# -- the install guide -----------------------------------------------------------------------------
def test_guide_installs_every_path_the_unit_uses():
    guide = guide_text()
    assert guide.startswith(GUIDE_HEADING)
    code = code_blocks(guide)
    paths = unit_paths()
    assert {"/opt/keywatch/bin/keywatch", "/etc/keywatch/keywatch.toml", "/etc/keywatch/credentials",
            "/var/lib/keywatch"} <= paths
    missing = sorted(p for p in paths if p not in code)
    assert not missing, f"paths in {UNIT.name} that no command of the guide installs or names: {missing}"
    assert "install -m644 systemd/keywatch.service /etc/systemd/system/" in code
    assert "python3 -m venv /opt/keywatch" in code
    assert "systemctl daemon-reload && sudo systemctl enable --now keywatch" in code
    assert "systemctl reload keywatch" in code
    assert "journalctl -u keywatch -o json" in code


def test_guide_uses_no_keywatch_path_the_unit_does_not_know():
    """A guide that installs /etc/keywatch/config.toml while the unit reads keywatch.toml fails here."""
    code = code_blocks(guide_text())
    exact = unit_paths()
    # Trees whose contents are free: the venv (pip, python ...), the credentials and the state directory.
    trees = {str(Path(EXEC_START.split()[0]).parents[1]), "/var/lib/keywatch", "/var/lib/private/keywatch"}
    trees.update(v.partition(":")[2] for v in unit_values("LoadCredential"))
    for path in set(re.findall(r"(/(?:etc|opt|var/lib)/(?:private/)?keywatch[A-Za-z0-9._/\-]*)", code)):
        path = path.rstrip("/")
        ok = (
            path in exact
            or any(path == t or path.startswith(t + "/") for t in trees)
            or any(k.startswith(path + "/") for k in exact)
        )
        assert ok, f"the guide uses {path}, which the unit does not refer to"


def test_guide_credentials_match_load_credential():
    (spec,) = unit_values("LoadCredential")
    cred_id, _, source = spec.partition(":")
    guide = guide_text()
    assert f"LoadCredential={spec}" in guide
    assert f"install -d -m700 {source}" in code_blocks(guide)
    # A directory passes each file NAME as the credential "<ID>_NAME".
    assert f'"credential:{cred_id}_' in guide


# -- Prometheus rules ------------------------------------------------------------------------------
def test_promtool_check_rules():
    promtool = require("promtool")
    res = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_promtool_test_rules():
    promtool = require("promtool")
    res = subprocess.run([promtool, "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_promtool_check_example_config():
    promtool = require("promtool")
    res = subprocess.run([promtool, "check", "config", PROM_EXAMPLE.name], cwd=PROM_EXAMPLE.parent,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def _rules() -> list[dict]:
    yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the rule files")
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_every_alert_has_a_firing_and_a_quiet_case():
    yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the rule files")
    alerts = {r["alert"] for r in _rules() if "alert" in r}
    required = {"KeywatchKeyInvalid", "KeywatchKeyForbidden", "KeywatchKeyQuotaExhausted", "KeywatchProbesStale",
                "KeywatchDown",
                "KeywatchNotReady", "KeywatchSinkBroken", "KeywatchProviderOutage", "KeywatchBudgetExceeded",
                "KeywatchBudgetForecastExhaustion"}
    assert required <= alerts
    fires, quiet = set(), set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for t in case.get("alert_rule_test", []):
            (fires if t.get("exp_alerts") else quiet).add(t["alertname"])
    assert alerts - fires == set(), "alerts without a test where they fire"
    assert alerts - quiet == set(), "alerts without a test where they stay quiet"


def test_rules_use_only_contract_metrics():
    for rule in _rules():
        unknown = {n for n in metric_names(rule["expr"]) if not contract_name(n)}
        assert not unknown, f"{rule.get('alert') or rule.get('record')}: unknown metrics {unknown}"
        for key in ("summary", "description"):
            if "alert" in rule:
                assert rule["annotations"].get(key), f"{rule['alert']} has no {key}"


# -- Grafana dashboard -----------------------------------------------------------------------------
def test_dashboard_structure():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["schemaVersion"] >= 39
    assert dash.get("uid") and dash.get("title")
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    # Grafana's import asks for the data source the `__inputs` name, and the variable starts on it.
    inputs = {i["name"]: i for i in dash["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["type"] == "datasource" and inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    assert variables["datasource"]["current"]["value"] == "${DS_PROMETHEUS}"
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"provider", "label_name", "label_value"} <= set(variables)
    for name in ("provider", "label_name", "label_value"):
        assert variables[name]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}

    panels = iter_panels(dash["panels"])
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    builtins = {"__rate_interval", "__interval", "__range"}
    for p in panels:
        assert p.get("datasource") == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert {"h", "w", "x", "y"} <= set(p["gridPos"]) and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        if p["type"] == "row":
            continue
        assert p["targets"], f"panel {p['title']!r} has no query"
        for t in p["targets"]:
            assert t.get("datasource") == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert t["expr"].strip()
            used = set(re.findall(r"\$\{?(\w+)", t["expr"]))
            assert used <= set(variables) | builtins, f"{p['title']}: undefined variables {used}"
            unknown = {n for n in metric_names(t["expr"]) if not contract_name(n)}
            assert not unknown, f"{p['title']}: unknown metrics {unknown}"


def test_dashboard_panels_do_not_overlap():
    dash = json.loads(DASHBOARD.read_text())
    cells: dict[tuple[int, int], str] = {}
    for p in iter_panels(dash["panels"]):
        g = p["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]


def test_dashboard_covers_the_issue():
    dash = json.loads(DASHBOARD.read_text())
    exprs = " ".join(t["expr"] for p in iter_panels(dash["panels"]) for t in p.get("targets", []))
    for needed in ("keywatch_key_health", "keywatch_key_last_probe_timestamp_seconds",
                   "keywatch_key_ratelimit_remaining", "keywatch_key_admin_state",
                   "keywatch_probe_duration_seconds_bucket", "keywatch_actions_total",
                   "keywatch_alerts_total", "keywatch_key_info", "ALERTS"):
        assert needed in exprs, f"no panel shows {needed}"
