"""`hook`: run a program when a policy starts matching a key (open a ticket, page someone, call an API)."""

from __future__ import annotations

import asyncio
import os
from typing import Literal

from pydantic import Field

from keywatch.engine.actions import register
from keywatch.engine.actions.base import Action, ActionConfig, ActionRequest
from keywatch.engine.model import ActionContext, Outcome
from keywatch.redact import REGISTRY
from keywatch.settings.types import Duration


class HookAction(ActionConfig):
    type: Literal["hook"] = "hook"
    command: list[str] = Field(
        min_length=1,
        description="Program and arguments (no shell); env KEYWATCH_KEY, KEYWATCH_ACTION, "
        "KEYWATCH_REASON, KEYWATCH_POLICY, KEYWATCH_PROVIDER, KEYWATCH_HEALTH; never the secret",
    )
    timeout: Duration = Field("30s", description="The command is killed after this long")


@register
class Hook(Action):
    type = "hook"
    config = HookAction
    counted = True
    once_per_match = True

    @classmethod
    def describe(cls, config: HookAction) -> str:
        return f"ran {config.command[0]}"

    @classmethod
    async def execute(cls, ex: ActionContext, req: ActionRequest) -> Outcome:
        """Run the program with what it needs to know and nothing more: not the daemon's environment, which
        may hold the secrets keywatch read from env: references."""
        command = req.config.command
        shown = " ".join(command)

        async def body() -> Outcome:
            env = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL", "TZ") if k in os.environ}
            env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
            env.update(
                KEYWATCH_KEY=req.key.name,
                KEYWATCH_ACTION=req.actor,
                KEYWATCH_REASON=req.reason,
                KEYWATCH_POLICY=req.actor,
                KEYWATCH_PROVIDER=req.key.provider,
                KEYWATCH_HEALTH=str(req.state.health),
                KEYWATCH_FINGERPRINT=req.key.fingerprint,
            )
            return await _run(command, env, req.config.timeout)

        return await ex.framed("hook", shown, req, body=body, would=f"would run {shown}", provider_action=False)


async def _run(command: list[str], env: dict[str, str], timeout: float) -> Outcome:
    try:
        proc = await asyncio.create_subprocess_exec(
            *command, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
    except OSError as exc:
        return Outcome("failed", f"cannot start: {exc.strerror or type(exc).__name__}")
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return Outcome("failed", f"killed after {timeout:g}s")
    tail = REGISTRY.redact(output.decode(errors="replace")[-300:].strip())
    result = "ok" if proc.returncode == 0 else "failed"
    return Outcome(result, f"exit {proc.returncode}" + (f": {tail}" if tail else ""), data={"exit": proc.returncode})
