"""The provider capability each policy action needs (declared by the action), checked when the config loads.

cloud-custodian's actions declare the permissions they need and a policy that cannot work is refused
before it runs. Here an action declares the provider capability it needs, so `revoke` on DeepSeek keys
is a config error at `keywatch config validate` instead of a "provider side not changed" at 3 a.m.

Capabilities come from each provider's ProviderInfo (providers/registry.py): validating a config never
imports boto3 or the Azure SDK, and gives the same answer on a machine without them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any, Protocol

from keywatch.providers import registry
from keywatch.providers.base import Capability

if TYPE_CHECKING:
    from keywatch.engine.policy_config import Conditions, PolicyConfig


class SelectableKey(Protocol):
    """What the check reads of a key: settings.schema.KeyConfig and providers.base.ManagedKey both fit."""

    name: str
    provider: str
    labels: dict[str, str]


def provider_capabilities(provider: str) -> frozenset[Capability]:
    return registry.capabilities(provider)


def selectable_providers(when: Conditions, keys: Iterable[SelectableKey]) -> list[str]:
    """Providers of the configured keys the policy's provider/keys/labels conditions can match, plus the
    providers its `provider` condition names outright (a key added later must not make it wrong)."""
    found: set[str] = set()
    for k in keys:
        if not getattr(k, "enabled", True):
            continue  # not monitored, so no policy acts on it
        if when.provider is not None and k.provider not in when.provider:
            continue
        if when.keys is not None and not any(fnmatchcase(k.name, p) for p in when.keys):
            continue
        if when.labels is not None and any(k.labels.get(n) != v for n, v in when.labels.items()):
            continue
        found.add(k.provider)
    if when.provider is not None and when.keys is None and when.labels is None:
        found.update(when.provider)
    return [p for p in registry.names() if p in found]


def _lacking(providers: Sequence[str], cap: Capability) -> list[str]:
    out = []
    for p in providers:
        caps = provider_capabilities(p)
        if caps is not None and cap not in caps:
            out.append(p)
    return out


def check(policies: Sequence[PolicyConfig], keys: Iterable[SelectableKey]) -> tuple[list[str], list[str]]:
    """(errors, warnings) for `policies` against the configured `keys`, each naming `policies[i]`,
    the policy, the action and the providers. Each action says what it needs (`Action.capability`,
    `needs_capability`) and what to say when a provider lacks it (`check_capability`)."""
    from keywatch.engine import actions

    keys = list(keys)
    errors: list[str] = []
    warnings: list[str] = []
    for i, p in enumerate(policies):
        if not p.enabled:
            continue
        providers: list[str] | None = None
        for j, a in enumerate(p.action_list):
            action = actions.get(a.type)
            if action.capability is None or not action.needs_capability(a):
                continue
            if providers is None:
                providers = selectable_providers(p.when, keys)
            lacking = _lacking(providers, action.capability)
            if lacking:
                found = action.check_capability(a, f"policies[{i}] ({p.name}) actions[{j}] {a.type}", lacking)
                errors += found.errors
                warnings += found.warnings
    return errors, warnings


def warnings(policies: Sequence[PolicyConfig], keys: Iterable[SelectableKey], safety: Any = None) -> list[str]:
    """The warnings of check(), for Inventory.warnings, and one when no policy raises a key alert at all
    (policies decide every key alert: without one, a dying key is silent)."""
    from keywatch.engine import actions
    from keywatch.engine.policy import effective_policies

    out = check(policies, keys)[1]
    if safety is not None:
        alerting = [
            p for p in effective_policies(list(policies), safety)
            if p.enabled and any(actions.get(a.type).raises_alert for a in p.action_list)
        ]
        if not alerting:
            out.append(
                "policies: no policy raises a key alert (safety.default_policies = "
                f"{safety.default_policies!r} and no written policy has an alert action): a key that dies or "
                'leaks is silent; add an alert action, or set safety.default_policies = "always"'
            )
    return out


def errors_for_config(policies: Sequence[PolicyConfig], data: dict[str, Any]) -> list[str]:
    """check()'s errors from inside the Config validation, where the keys validated so far are in
    `data`; without them (they failed to validate) nothing is said, their errors come first. The
    leading `policies` is left to the loader, which prefixes the field (`policies: [0] (name) ...`)."""
    keys = data.get("keys")
    if keys is None:
        return []
    return [e.removeprefix("policies") for e in check(policies, keys)[0]]
