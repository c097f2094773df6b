"""The plain types of the policy engine: what a decision sees (KeyView), decides (Decision) and asks for
(ActionRequest), what an action did (Outcome), and the two sides an action module talks to (the plan
builder and the executor), as protocols.

Everything in engine/ may import this module; it imports nothing of engine/, so action modules
(engine/actions/) and the engine's core (policy, plan, executor) never import each other in a circle.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from keywatch.domain import AdminState, Health, KeyState, ManagedKey, Severity
from keywatch.providers.base import Capability
from keywatch.settings.types import Strict

OPERATOR_PREFIX = "operator:"


def is_operator(actor: str | None) -> bool:
    return bool(actor) and actor.startswith(OPERATOR_PREFIX)  # type: ignore[union-attr]


class ActionConfig(Strict):
    """Base of every action's config model; each subclass declares `type: Literal["<name>"]`."""

    type: str


@dataclass(frozen=True)
class ActionRequest:
    """One action to run now: what, on which key, by whom and why."""

    key: ManagedKey
    state: KeyState
    actor: str
    reason: str
    config: Any
    dry_run: bool = False


@dataclass(frozen=True, slots=True)
class KeyView:
    """What a decision may know about one key this cycle."""

    state: KeyState
    signals: frozenset[str] = frozenset()
    changed_from: Health | None = None  # set when health changed in this cycle
    counted_probes: int | None = None  # consecutive probes outside outages; None: state.consecutive
    counted_since: datetime | None = None  # start of the streak, outage time excluded; None: health_since
    in_outage: bool = False
    admin_actor: str | None = None
    admin_changed_at: datetime | None = None

    @property
    def key(self) -> str:
        return self.state.key

    @property
    def probes(self) -> int:
        return self.state.consecutive if self.counted_probes is None else self.counted_probes

    @property
    def since(self) -> datetime | None:
        return self.state.health_since if self.counted_since is None else self.counted_since

    @property
    def all_signals(self) -> frozenset[str]:
        return self.signals | {"compromised"} if self.state.compromised else self.signals

    @property
    def operator_holds(self) -> bool:
        """A person's decision stands: a disable forever, an enable until the key's health next changes."""
        if not is_operator(self.admin_actor):
            return False
        if self.state.admin_state is AdminState.DISABLED:
            return True
        since = self.state.health_since
        return since is None or self.admin_changed_at is None or self.admin_changed_at >= since


@dataclass(frozen=True)
class Decision:
    policy: str
    key: str
    provider: str
    action: ActionConfig
    reason: str
    dry_run: bool = False

    @property
    def kind(self) -> str:
        return self.action.type


@dataclass(frozen=True)
class AlertWish:
    identity: str
    severity: Severity
    key: str
    provider: str
    policy: str
    title: str
    reason: str




@dataclass
class Outcome:
    """What one action did. `result`: ok, partial (keywatch side done, provider side not), failed, dry_run,
    already (not run: the key's live state shows it done meanwhile, e.g. by a containment)."""

    result: str
    message: str
    provider_changed: bool | None = None  # None: not attempted
    state: KeyState | None = None
    data: dict[str, Any] = field(default_factory=dict)


class PlanBuilder(Protocol):
    """What an action's `plan()` adds to (engine.plan.Builder)."""

    def act(self, d: Decision, view: KeyView) -> None: ...
    def alert(self, wish: AlertWish) -> None: ...
    def note(self, d: Decision, message: str) -> None: ...
    def hold_out(self, key: str, pools: Iterable[str]) -> None: ...
    def hold_in(self, key: str, pools: Iterable[str]) -> None: ...


class ActionContext(Protocol):
    """What an action's `execute()` uses (engine.executor.Executor)."""

    async def framed(self, action: str, subject: str, req: ActionRequest, *, body: Callable[[], Awaitable[Outcome]],
                     would: str | None = None, provider_action: bool = True) -> Outcome: ...
    async def provider_call(self, key: ManagedKey, cap: Capability, call: str, *,
                            at_provider: bool = True) -> tuple[bool | None, str]: ...
    async def set_admin(self, state: KeyState, actor: str, reason: str) -> None: ...
    async def alert_failure(self, key: ManagedKey, action: str, actor: str, message: str) -> None: ...
