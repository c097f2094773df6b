"""`keywatch run`: the command's own frame lives as long as the daemon, so it must not hold the config."""

from __future__ import annotations

import gc

from keywatch import logging as kwlog
from keywatch.cli.app import main
from keywatch.daemon import Daemon
from keywatch.settings.schema import KeyConfig


def test_the_daemon_run_by_the_command_has_no_validated_keys_beside_it(tmp_path, monkeypatch) -> None:
    secret = tmp_path / "secret"
    secret.write_text("sk-proj-" + "a" * 40)
    lines = ["[daemon]", f'database = "sqlite:///{tmp_path / "k.db"}"']
    for i in range(200):
        lines += ["[[keys]]", f'name = "k{i}"', 'provider = "openai"', f'secret = "file:{secret}"']
    cfg = tmp_path / "keywatch.toml"
    cfg.write_text("\n".join(lines))
    alive: list[int] = []

    async def run(self: Daemon) -> int:  # what is alive once the daemon would start
        gc.collect()
        alive.append(sum(1 for o in gc.get_objects() if isinstance(o, KeyConfig)))
        return 0

    monkeypatch.setattr(Daemon, "run", run)
    monkeypatch.setattr(kwlog, "setup", lambda *a, **kw: None)
    assert main(["run", "--config", str(cfg)]) == 0
    assert alive == [0]  # 200 validated [[keys]] models (about 2 KB each) were kept before
