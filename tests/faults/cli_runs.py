"""Running `keywatch` commands as real processes, several at once (each pays the interpreter's start-up)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

PARALLEL = max(2, min(8, (os.cpu_count() or 2) + 1))


@dataclass
class Outcome:
    args: list[str]
    returncode: int
    output: str  # stdout and stderr together

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.output or '"exception"' in self.output


ROOT = Path(__file__).resolve().parents[2]


def base_env(**extra: str) -> dict[str, str]:
    """A clean environment that imports keywatch from this checkout, whatever the directory."""
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env.update(extra)
    return env


def keywatch(args: Sequence[str], env: dict[str, str], cwd: Path, timeout: float = 30) -> Outcome:
    """`keywatch ARGS`; a `run` that does not end by itself within `timeout` is killed (returncode -9)."""
    proc = subprocess.Popen([sys.executable, "-m", "keywatch", *args], env=env, cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return Outcome(list(args), proc.returncode, out)


def keywatch_many(jobs: Sequence[tuple[Sequence[str], dict[str, str], Path]], timeout: float = 30) -> list[Outcome]:
    with ThreadPoolExecutor(PARALLEL) as pool:
        return list(pool.map(lambda job: keywatch(*job, timeout=timeout), jobs))


def keywatch_forked(jobs: Sequence[tuple[Sequence[str], dict[str, str], Path]], workdir: Path,
                    timeout: float = 120) -> list[Outcome]:
    """The same as keywatch_many, each command in a process forked from one interpreter that imported
    keywatch already (tests/faults/forked_cli.py): many commands in seconds, not minutes. For commands that
    end by themselves (a `run` that starts would not)."""
    import json

    spec = []
    for i, (args, env, cwd) in enumerate(jobs):
        spec.append({"argv": list(args), "env": env, "cwd": str(cwd), "out": str(workdir / f"job{i:03d}.out")})
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("forked_cli.py"))], input=json.dumps(spec),
                          capture_output=True, text=True, timeout=timeout, env={**base_env(), "KW_FORK_PARALLEL":
                                                                               str(PARALLEL)}, cwd=workdir)
    assert done.returncode == 0, done.stderr
    codes = json.loads(done.stdout.splitlines()[-1])
    return [Outcome(list(job["argv"]), code, Path(job["out"]).read_text(errors="replace"))
            for job, code in zip(spec, codes, strict=True)]
