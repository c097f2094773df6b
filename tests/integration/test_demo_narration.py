"""`keywatch demo` as a user runs it: actions narrated one line each, the daemon's log in a file (not on the
terminal) unless --verbose, the printed config works with `keywatch check`, and it ends with what to try."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from keywatch.cli.common import EXIT_ATTENTION
from tests.faults.cli_runs import base_env, keywatch


@pytest.mark.slow
def test_demo_narrates_actions_and_its_config_works_with_check(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "keywatch", "demo", "--duration", "14", "--interval", "1s",
                             "--listen", "127.0.0.1:0"], env=base_env(), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        cfg = None
        deadline = time.monotonic() + 30
        while cfg is None and time.monotonic() < deadline:
            lines.append(proc.stdout.readline())
            m = re.match(r"config: (\S+)", lines[-1])
            cfg = m.group(1) if m else None
        assert cfg, lines
        checked = keywatch(["check", "-c", cfg], base_env(), tmp_path)  # another shell, while the demo runs
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert checked.returncode == EXIT_ATTENTION and "openai-old" in checked.output, checked.output  # not 2
    text = "".join(lines) + out
    assert re.search(r"^\[ *[\d.]+s\] action done: disable openai-old: ", text, re.M), text
    assert "held openai-intern out of every pool" in text
    assert err == "", err  # the daemon's log went to the file
    log = Path(cfg).with_name("keywatch.log").read_text()
    assert "cycle_done" in log
    tail = text[text.index("what to try next:"):]
    assert f"keywatch events -c {cfg}" in tail
