"""Provider-side signals turned into containment, checked once a cycle (and the status checks every
`leaks.provider_check_interval`):

- AWS: the AWSCompromisedKeyQuarantine policy on the key's user (the IAM probe reports it) and, where the
  account has AWS Health (Business or Enterprise support), the `AWS_RISK_CREDENTIALS_EXPOSED` event naming
  the access key id.
- OpenAI: a key gone from its project's key list (OpenAI deletes keys it finds leaked) that keywatch did
  not revoke.
- Anthropic, OpenRouter (any provider with a key status): a key whose status at the provider left `active`
  while keywatch holds it active (keywatch did not deactivate it).
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from keywatch.domain import AdminState, ManagedKey
from keywatch.providers.base import Capability, NotSupported, ProviderActionError

if TYPE_CHECKING:
    from keywatch.runtime import CycleReport, Runtime

log = structlog.get_logger("keywatch.leaks")
STATUS_PROVIDERS = ("openai", "anthropic", "openrouter")
HEALTH_EVENT = "AWS_RISK_CREDENTIALS_EXPOSED"
GONE = "gone"


class Exposures(Protocol):
    async def provider_exposure(self, key: str, source: str, location: str) -> None: ...


class ProviderSignals:
    def __init__(self, rt: Runtime, sink: Exposures) -> None:
        self.rt = rt
        self.sink = sink
        self.status: dict[str, str] = {}  # key -> the provider's last word about it
        self._checked_at: float | None = None

    async def on_cycle(self, report: CycleReport) -> None:
        for r in report.compromised:
            await self.sink.provider_exposure(
                r.key, "aws_quarantine", r.compromise_reason or "AWS quarantine policy on the key's user"
            )
        interval = float(self.rt.inventory.config.leaks.provider_check_interval)
        now = time.monotonic()
        if interval <= 0 or (self._checked_at is not None and now - self._checked_at < interval):
            return
        self._checked_at = now
        await self.check_statuses()
        await self.check_aws_health()

    # -- key status at the provider -------------------------------------------------------------------
    async def check_statuses(self) -> None:
        keys = [k for k in self.rt.inventory.keys if k.provider in STATUS_PROVIDERS and k.account]
        await asyncio.gather(*(self._status(k) for k in keys))

    async def _status(self, key: ManagedKey) -> None:
        try:
            adapter = self.rt.adapter(key.provider)
            if Capability.METADATA not in adapter.capabilities:
                return
            meta = await adapter.metadata(key)
            now = (meta.status or "active").lower()
        except NotSupported:
            return
        except ProviderActionError as exc:
            if not _gone(exc):
                return  # the management API is down or refuses: no news about the key
            now = GONE
        except Exception:
            return
        before = self.status.get(key.name)
        self.status[key.name] = now
        if before != "active" or now == "active":
            return  # a key first seen inactive, or unchanged: nothing happened to it
        st = self.rt.tracker.snapshot().get(key.name)
        if st is None or st.admin_state is not AdminState.ACTIVE:
            return  # keywatch (or a person through it) changed the key: not a provider's signal
        what = "is gone from its project's key list" if now == GONE else f"turned {now}"
        await self.sink.provider_exposure(
            key.name, f"{key.provider}_status", f"{key.provider}: the key {what} without keywatch doing it"
        )

    # -- AWS Health ------------------------------------------------------------------------------------
    async def check_aws_health(self) -> None:
        inventory = self.rt.inventory
        by_id = {
            str(k.options["access_key_id"]): k
            for k in inventory.keys
            if k.provider == "aws_iam" and k.options.get("access_key_id")
        }
        if not by_id:
            return
        settings = inventory.config.leaks
        endpoint = settings.aws_health_endpoint_url
        for name in settings.aws_health_accounts:
            account = inventory.accounts.get(name)
            if account is None:
                continue
            try:
                exposed = await asyncio.to_thread(_health_exposed, account, endpoint)
            except Exception as exc:  # no Business support (SubscriptionRequiredException), network ...
                log.info("aws_health_unavailable", account=account.name, error=type(exc).__name__)
                continue
            for key_id, arn in exposed:
                key = by_id.get(key_id)
                if key is not None:
                    await self.sink.provider_exposure(
                        key.name, "aws_health", f"AWS Health {HEALTH_EVENT} ({arn[-60:]})"
                    )


def _gone(exc: ProviderActionError) -> bool:
    """The provider's key list no longer has the key (as opposed to the management API failing)."""
    return exc.permanent and (exc.status == 404 or bool(re.search(r": no \w+ key (?:matches|with id)", str(exc))))


def _health_exposed(account: Any, endpoint: str | None) -> list[tuple[str, str]]:
    """(access key id, event arn) of every open AWS_RISK_CREDENTIALS_EXPOSED event (Health's global
    endpoint lives in us-east-1)."""
    import boto3
    from botocore.config import Config

    client = boto3.session.Session().client(
        "health",
        region_name="us-east-1",
        endpoint_url=endpoint,
        aws_access_key_id=account.options.get("access_key_id"),
        aws_secret_access_key=account.admin_secret.reveal() if account.admin_secret else None,
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}, user_agent_extra="keywatch"),
    )
    events = client.describe_events(filter={"eventTypeCodes": [HEALTH_EVENT], "eventStatusCodes": ["open"]})
    arns = [e["arn"] for e in events.get("events", []) if "arn" in e]
    if not arns:
        return []
    entities = client.describe_affected_entities(filter={"eventArns": arns[:10]})
    return [(e["entityValue"], e.get("eventArn", "")) for e in entities.get("entities", []) if "entityValue" in e]
