"""Every kind of malformed config is refused by `keywatch config validate` and by `keywatch run` alike: exit
2, a line naming the file and the field, no traceback, no secret echoed, nothing started (no database)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.cli_runs import base_env, keywatch_forked
from tests.faults.malformed import CASES, LITERAL, SECRET_ENV

pytestmark = pytest.mark.slow


def _problems(outcome, cfg: Path, names: str) -> list[str]:
    """What is wrong with how `outcome` refused `cfg`; empty when it refused as it must."""
    wrong = []
    if outcome.returncode != 2:
        wrong.append(f"exit {outcome.returncode}")
    if outcome.traceback:
        wrong.append("a traceback")
    if not any(str(cfg) in line and names in line for line in outcome.output.splitlines()):
        wrong.append(f"no line naming {cfg.name} and {names!r}")
    for secret in (LITERAL, *[v for v in SECRET_ENV.values() if v.strip()]):
        if secret in outcome.output:
            wrong.append("a secret echoed")
    return wrong


def test_malformed_configs_refused_by_validate_and_run(tmp_path: Path, figure) -> None:
    assert len({c.kind for c in CASES}) == len(CASES) >= 30
    env = base_env(**SECRET_ENV)
    jobs, paths = [], []
    for i, case in enumerate(CASES):
        d = tmp_path / f"case{i:02d}"
        d.mkdir()
        cfg = d / "keywatch.toml"
        cfg.write_bytes(case.text if isinstance(case.text, bytes) else case.text.encode())
        paths.append((cfg, d))
        jobs.append((["config", "validate", "-c", str(cfg)], env, d))
        jobs.append((["run", "-c", str(cfg)], env, d))  # no database set: it would be ./keywatch.db
    outcomes = keywatch_forked(jobs, tmp_path)
    failures = {}
    for i, case in enumerate(CASES):
        cfg, d = paths[i]
        validate, run = outcomes[2 * i], outcomes[2 * i + 1]
        wrong = [f"validate: {w}" for w in _problems(validate, cfg, case.names)]
        wrong += [f"run: {w}" for w in _problems(run, cfg, case.names)]
        if list(d.glob("keywatch.db*")):
            wrong.append("run: created the database")
        if wrong:
            failures[case.kind] = (wrong, validate.output[-600:], run.output[-600:])
    refused = len(CASES) - len(failures)
    tracebacks = sum(o.traceback for o in outcomes)
    figure("malformed configs", f"{refused}/{len(CASES)} kinds refused by validate and run (exit 2, file and "
           f"field named), {tracebacks} tracebacks, 0 secrets echoed" if not failures else
           f"{len(failures)} of {len(CASES)} kinds not refused as they must be: {sorted(failures)}")
    assert not failures, failures
