"""Providers whose only key-level API is the account balance: DeepSeek and Moonshot.

The balance endpoint is the probe: it authenticates the key at zero tokens and says whether the
account can still pay. An answer that cannot be read as a balance is a failed probe (bad_response),
never "balance 0": a local OpenAI-compatible server answering 200 with an unrelated body must not make
a key look exhausted.
"""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any, ClassVar

import httpx2

from keywatch.domain import Health, ManagedKey, ProbeResult
from keywatch.providers import mgmt
from keywatch.providers.base import ProviderAdapter
from keywatch.providers.errors import Refusal, classify_status, error_fields, retry_after


class BadBalance(ValueError):
    """The 2xx answer is not the documented balance shape."""


class BalanceAdapter(ProviderAdapter):
    """Probe = GET the balance endpoint with the key as Bearer; subclasses read their own body shape."""

    default_base_url: ClassVar[str]
    balance_path: ClassVar[str]
    # error type -> health, for refusals whose status alone does not tell (e.g. a quota 429).
    type_health: ClassVar[dict[str, Health]] = {}

    async def probe(self, key: ManagedKey) -> ProbeResult:
        started = time.perf_counter()
        base = (key.base_url or self.default_base_url).rstrip("/")
        answer = await self.http_probe(
            key,
            base + self.balance_path,
            started=started,
            headers=lambda secret: {"Authorization": f"Bearer {secret}"},
            refusal=self._refusal,
            decode=_exact_json,
        )
        if isinstance(answer, ProbeResult):
            return answer
        response, body = answer
        try:
            available, details = self.read_balance(body, base)
        except BadBalance as exc:
            return self.bad_response(
                key, started, response.status_code, f"the balance answer is unreadable: {exc}"
            )
        if not available:
            return self.result(
                key,
                Health.QUOTA_EXHAUSTED,
                started,
                http_status=response.status_code,
                error_code="insufficient_balance",
                error_message="the account balance is used up",
                **details,
            )
        return self.result(key, Health.HEALTHY, started, http_status=response.status_code, **details)

    def _refusal(self, response: httpx2.Response, body: Any) -> Refusal:
        err_type, code, message = error_fields(body)
        health = classify_status(response.status_code)
        if response.status_code < 500 and err_type in self.type_health:
            health = self.type_health[err_type]
        return Refusal(
            health, code=err_type or code, message=message, retry_after_seconds=retry_after(response.headers)
        )

    def read_balance(self, body: Any, base_url: str) -> tuple[bool, dict[str, Any]]:
        """(can the account still pay, figures for ProbeResult.details); BadBalance when unreadable."""
        raise NotImplementedError


def _exact_json(response: httpx2.Response) -> Any:
    """The body with amounts as Decimal, so a balance of 0.1 reads as 0.1; None when it is not JSON."""
    try:
        return json.loads(response.content, parse_float=Decimal)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than any real answer
        return None


def _amount(value: Any, where: str) -> Decimal:
    d = mgmt.decimal_or_none(value)
    if d is None:
        raise BadBalance(f"{where} is not an amount")
    return d


class DeepSeekAdapter(BalanceAdapter):
    name = "deepseek"
    default_base_url = "https://api.deepseek.com"
    balance_path = "/user/balance"

    def read_balance(self, body: Any, base_url: str) -> tuple[bool, dict[str, Any]]:
        if not isinstance(body, dict) or not isinstance(body.get("is_available"), bool):
            raise BadBalance("no boolean is_available")
        infos = body.get("balance_infos")
        if not isinstance(infos, list):
            raise BadBalance("no balance_infos list")
        balances = []
        for i, info in enumerate(infos):
            if not isinstance(info, dict) or not isinstance(info.get("currency"), str):
                raise BadBalance(f"balance_infos[{i}] has no currency")
            entry = {"currency": info["currency"]}
            for f in ("total_balance", "granted_balance", "topped_up_balance"):
                if f in info:
                    entry[f] = str(_amount(info[f], f"balance_infos[{i}].{f}"))
            if "total_balance" not in entry:
                raise BadBalance(f"balance_infos[{i}] has no total_balance")
            balances.append(entry)
        funded = any(Decimal(b["total_balance"]) > 0 for b in balances)
        available = body["is_available"] and (funded or not balances)
        details: dict[str, Any] = {"is_available": body["is_available"], "balances": balances}
        if balances:
            details["currency"] = balances[0]["currency"]
            details["balance"] = balances[0]["total_balance"]
        return available, details


class MoonshotAdapter(BalanceAdapter):
    name = "moonshot"
    default_base_url = "https://api.moonshot.ai/v1"
    balance_path = "/users/me/balance"
    # Moonshot answers 429 both for an account that cannot pay and for its own overload.
    type_health: ClassVar[dict[str, Health]] = {
        "exceeded_current_quota_error": Health.QUOTA_EXHAUSTED,
        "engine_overloaded_error": Health.PROVIDER_ERROR,
        "invalid_authentication_error": Health.INVALID,
        "permission_denied_error": Health.FORBIDDEN,
    }

    def read_balance(self, body: Any, base_url: str) -> tuple[bool, dict[str, Any]]:
        if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
            raise BadBalance("no data object")
        if body.get("code") not in (0, None) or body.get("status") is False:
            raise BadBalance(f"code {body.get('code')!r}, status {body.get('status')!r}")
        data = body["data"]
        if "available_balance" not in data:
            raise BadBalance("no available_balance")
        available = _amount(data["available_balance"], "data.available_balance")
        details: dict[str, Any] = {"balance": str(available)}
        for f in ("voucher_balance", "cash_balance"):
            if f in data:
                details[f] = str(_amount(data[f], f"data.{f}"))
        details["currency"] = "CNY" if httpx2.URL(base_url).host.endswith(".cn") else "USD"
        return available > 0, details
