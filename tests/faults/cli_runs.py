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


def base_env(**extra: str) -> dict[str, str]:
    env = {k: os.environ[k] for k in ("PATH", "HOME", "PYTHONPATH", "LANG") if k in os.environ}
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
