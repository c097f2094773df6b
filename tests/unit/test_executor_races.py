"""Two paths acting on one key at once (the policy engine's cycle and a leak containment, each with its own
executor): the actions run one at a time per key, and the second, planned on the state before the first,
is asked again on the live state: the provider is called once."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from keywatch.domain import AdminState, KeyState, ManagedKey, Secret
from keywatch.engine.actions.disable import DisableAction
from keywatch.engine.executor import Executor
from keywatch.engine.model import ActionRequest
from keywatch.providers.base import Capability, ProviderAdapter
from keywatch.state import StateTracker


class SlowProvider(ProviderAdapter):
    name = "openrouter"
    capabilities = frozenset({Capability.DISABLE})

    def __init__(self) -> None:
        super().__init__(None)  # type: ignore[arg-type]
        self.calls = 0

    async def disable(self, key: ManagedKey) -> None:
        self.calls += 1
        await asyncio.sleep(0.05)  # long enough for the other path to arrive meanwhile


async def test_two_executors_disable_a_key_once() -> None:
    key = ManagedKey("app", "openrouter", Secret("sk-or-v1-" + "c" * 64), "env:X")
    state = KeyState(key.name, key.provider, key.fingerprint, key.masked)
    tracker = StateTracker({key.name: state})
    provider = SlowProvider()
    locks: dict[str, asyncio.Lock] = {}

    def on_state(new: KeyState, actor: str, reason: str) -> None:
        tracker.set(replace(tracker.snapshot()[new.key], admin_state=new.admin_state))

    async def record(event: object) -> None:
        return None

    def executor() -> Executor:
        return Executor(lambda p: provider, None, record, on_state=on_state,
                        current=lambda k: tracker.snapshot().get(k), locks=locks)

    cycle, containment = executor(), executor()
    req = ActionRequest(key, state, "policy", "compromised", DisableAction(at_provider=True))
    first, second = await asyncio.gather(containment.run(replace(req, actor="containment")), cycle.run(req))
    assert provider.calls == 1
    assert first.result == "ok" and first.provider_changed is True
    assert second.result == "already" and "disabled" in second.message
    assert tracker.snapshot()[key.name].admin_state is AdminState.DISABLED


async def test_without_a_change_meanwhile_the_action_runs_as_planned() -> None:
    key = ManagedKey("app", "openrouter", Secret("sk-or-v1-" + "d" * 64), "env:X")
    state = KeyState(key.name, key.provider, key.fingerprint, key.masked)
    tracker = StateTracker({key.name: state})
    provider = SlowProvider()

    async def record(event: object) -> None:
        return None

    ex = Executor(lambda p: provider, None, record, current=lambda k: tracker.snapshot().get(k))
    out = await ex.run(ActionRequest(key, state, "policy", "dead", DisableAction(at_provider=True)))
    assert out.result == "ok" and provider.calls == 1
