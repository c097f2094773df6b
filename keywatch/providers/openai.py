"""OpenAI and OpenAI-compatible servers, through the official `openai` SDK.

Probe modes: `models` (GET /models, zero tokens; proves authentication, cannot see exhausted quota) and
`completion` (1 output token on a cheap model; also sees exhausted quota, inactive billing and models
the key may not use). The `models` probe takes the lean path (providers.lean) on the shared client and
reads the answer as the SDK does; completion probes and admin calls go through the SDK.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import httpx2

from keywatch.domain import Account, Health, ManagedKey, ProbeResult
from keywatch.providers.base import (
    Capability,
    Credential,
    KeyMetadata,
    NewCredential,
    NotSupported,
    ProviderActionError,
    ProviderAdapter,
    RotationSupport,
)
from keywatch.providers.errors import UnreadableBody, classify_status, openai_ratelimit, retry_after
from keywatch.providers.lean import LeanHttp, lean_of
from keywatch.providers.openai_admin import NO_DEACTIVATE, OpenAIAdmin

if TYPE_CHECKING:
    import openai

# error code (or type) -> health, from the documented error table (README, "OpenAI errors").
CODE_HEALTH: dict[str, Health] = {
    "invalid_api_key": Health.INVALID,
    "account_deactivated": Health.INVALID,
    "no_organization": Health.INVALID,
    "mismatched_organization": Health.INVALID,
    "missing_scope": Health.FORBIDDEN,
    "model_not_found": Health.FORBIDDEN,
    "unsupported_country_region_territory": Health.FORBIDDEN,
    "insufficient_quota": Health.QUOTA_EXHAUSTED,
    "billing_not_active": Health.QUOTA_EXHAUSTED,
    "rate_limit_exceeded": Health.RATE_LIMITED,
}


def classify_openai_error(status: int, code: str | None, err_type: str | None, message: str = "") -> Health:
    """Only answers about the key may blame it; 5xx never does, whatever its body says."""
    if status >= 500:
        return Health.PROVIDER_ERROR
    if status in (401, 403) and "missing scopes" in message.lower():
        return Health.FORBIDDEN  # a restricted key: real bodies often carry code null
    for word in (code, err_type):
        if word and word in CODE_HEALTH:
            health = CODE_HEALTH[word]
            # A code is trusted only with the status it belongs to (a 400 "invalid_api_key" is odd, but a key answer).
            if status in (401, 403, 404, 429, 400):
                return health
    if status == 404:
        return Health.PROVIDER_ERROR  # wrong base URL or endpoint: not the key's fault
    if status == 400:
        return Health.PROVIDER_ERROR  # the probe request was refused: a configuration matter
    return classify_status(status)


class OpenAIAdapter(ProviderAdapter):
    name = "openai"
    default_base_url = "https://api.openai.com/v1"

    def __init__(self, http: httpx2.AsyncClient, accounts: dict[str, Account] | None = None, **kw: Any) -> None:
        super().__init__(http, accounts, **kw)
        self._clients: dict[tuple[str, str, str], openai.AsyncOpenAI] = {}
        self._admin = OpenAIAdmin(http, self.timeout)

    async def metadata(self, key: ManagedKey) -> KeyMetadata:
        self._require(Capability.METADATA)
        return await self._admin.metadata(self.account_for(key), key)

    async def disable(self, key: ManagedKey) -> None:
        raise NotSupported(NO_DEACTIVATE)

    async def enable(self, key: ManagedKey) -> None:
        raise NotSupported(NO_DEACTIVATE)

    async def revoke(self, key: ManagedKey) -> None:
        self._require(Capability.REVOKE)
        await self._admin.revoke(self.account_for(key), key)

    # -- rotation (Admin API): service-account keys are created; user-owned keys rotate assisted ------
    async def rotation_support(self, key: ManagedKey) -> RotationSupport:
        if self.name != "openai":
            return await super().rotation_support(key)
        try:
            account = self.account_for(key)
        except ProviderActionError as exc:
            return RotationSupport("assisted", f"no Admin API account, so no key can be created: {exc}")
        return await self._admin.rotation_support(account, key)

    async def current_credential(self, key: ManagedKey) -> Credential:
        self._require(Capability.METADATA)
        return await self._admin.current_credential(self.account_for(key), key)

    async def list_credentials(self, key: ManagedKey) -> list[Credential]:
        self._require(Capability.METADATA)
        return await self._admin.list_credentials(self.account_for(key), key)

    async def create_credential(self, key: ManagedKey, *, name: str) -> NewCredential:
        self._require(Capability.METADATA)
        return await self._admin.create_credential(self.account_for(key), key, name=name)

    async def deactivate_credential(self, key: ManagedKey, credential_id: str) -> None:
        raise NotSupported(NO_DEACTIVATE)

    async def reactivate_credential(self, key: ManagedKey, credential_id: str) -> None:
        raise NotSupported(NO_DEACTIVATE)

    async def delete_credential(self, key: ManagedKey, credential_id: str) -> None:
        """Delete a key by id (the service account stays); the caller decides whether it may."""
        self._require(Capability.REVOKE)
        await self._admin.delete_credential(self.account_for(key), key, credential_id)

    def _require(self, capability: Capability) -> None:
        if capability not in self.capabilities:
            raise NotSupported(f"{self.name}: {self.notes.get(capability.value, 'not offered')}")

    def client(self, key: ManagedKey) -> openai.AsyncOpenAI:
        """One SDK client per endpoint, shared by every key there; each request carries its key's header.

        A client per key would cost ~30 kB and a construction per key: at thousands of keys, memory and
        start-up that buy nothing, since the connection pool is shared anyway.
        """
        base_url = key.base_url or self.default_base_url
        org, project = key.options.get("organization"), key.options.get("project")
        cache_key = (base_url or "", org or "", project or "")
        client = self._clients.get(cache_key)
        if client is None:
            import openai  # the SDK is loaded by the first probe or call that needs it

            client = openai.AsyncOpenAI(
                api_key="per-request",  # replaced by each request's Authorization header
                base_url=base_url,
                organization=org,
                project=project,
                http_client=self.http,
                max_retries=0,
                timeout=self.timeout,
            )
            self._clients[cache_key] = client
        return client

    async def probe(self, key: ManagedKey) -> ProbeResult:
        started = time.perf_counter()
        if key.secret is None:
            return self.result(key, Health.PROVIDER_ERROR, started, error_code="no_secret",
                               error_message="the key's secret is not resolved")
        lean = lean_of(self.http)
        if lean is not None and key.probe != "completion":
            return await self._lean_probe(lean, key, started)
        import openai

        client = self.client(key)
        auth = {"Authorization": f"Bearer {key.secret.reveal()}"}
        try:
            if key.probe == "completion":
                raw: Any = await client.chat.completions.with_raw_response.create(
                    model=key.model or self.completion_model,
                    messages=[{"role": "user", "content": "ping"}],
                    max_tokens=1,
                    extra_headers=auth,
                )
            else:
                # The SDK's own request path (typed errors, headers, timeout) without building a page
                # of pydantic models: at thousands of keys a cycle that is most of the probe's CPU.
                raw = await client.get("/models", cast_to=httpx2.Response, options={"headers": auth})
        except openai.APIStatusError as exc:
            if exc.response.is_redirect:
                return self.redirected(key, started, exc.status_code)
            headers = exc.response.headers
            message = _message(exc)
            # A hostile or broken server can put anything where the code and type belong.
            code = exc.code if isinstance(exc.code, str) else None
            err_type = exc.type if isinstance(exc.type, str) else None
            health = classify_openai_error(exc.status_code, code, err_type, message)
            return self.result(
                key, health, started,
                http_status=exc.status_code,
                error_code=code or err_type,
                error_message=message,
                ratelimit=openai_ratelimit(headers),
                retry_after_seconds=retry_after(headers),
            )
        except openai.APITimeoutError:
            return self.result(key, Health.UNREACHABLE, started, error_code="timeout",
                               error_message=f"no answer within {self.timeout:g}s")
        except openai.APIConnectionError as exc:
            if isinstance(exc.__cause__, UnreadableBody):  # an answer came, and was not read to its end
                return self.result(key, Health.PROVIDER_ERROR, started, error_code=exc.__cause__.code,
                                   error_message=str(exc.__cause__))
            return self.result(key, Health.UNREACHABLE, started, error_code="connect_error",
                               error_message=str(exc.__cause__ or exc))
        except openai.APIResponseValidationError as exc:
            return self.bad_response(key, started, exc.status_code, "the answer is not the documented shape")
        except RecursionError:  # JSON nested deeper than any real answer
            return self.bad_response(key, started, None, "the answer is nested too deeply to read")
        # The list itself is not needed, only proof that it is one: plain JSON is several times
        # cheaper than building a pydantic model per listed model (OpenAI lists about a hundred).
        expected = "choices" if key.probe == "completion" else "data"
        http_response = raw if isinstance(raw, httpx2.Response) else raw.http_response
        try:
            body = json.loads(http_response.content)
        except (ValueError, RecursionError):  # HTML from a proxy, a captive portal, a hostile nesting ...
            body = None
        if not isinstance(body, dict) or not isinstance(body.get(expected), list):
            return self.bad_response(key, started, http_response.status_code,
                                     f"the answer has no `{expected}` list: not the documented shape")
        return self.result(key, Health.HEALTHY, started, http_status=http_response.status_code,
                           ratelimit=openai_ratelimit(http_response.headers))

    async def _lean_probe(self, lean: LeanHttp, key: ManagedKey, started: float) -> ProbeResult:
        """`GET /models` on the lean path, read exactly as the SDK reads it: the same error fields (the
        `error` object, else the whole body), the same messages, the same table."""
        assert key.secret is not None
        base_url = (key.base_url or self.default_base_url or "").rstrip("/")
        headers = {"Authorization": f"Bearer {key.secret.reveal()}"}
        org, project = key.options.get("organization"), key.options.get("project")
        if org:
            headers["OpenAI-Organization"] = str(org)
        if project:
            headers["OpenAI-Project"] = str(project)
        try:
            response = await lean.get(f"{base_url}/models", headers=headers, timeout=self.timeout)
        except UnreadableBody as exc:  # an answer came, and was not read to its end
            return self.result(key, Health.PROVIDER_ERROR, started, error_code=exc.code, error_message=str(exc))
        except httpx2.TimeoutException:
            return self.result(key, Health.UNREACHABLE, started, error_code="timeout",
                               error_message=f"no answer within {self.timeout:g}s")
        except httpx2.HTTPError as exc:
            return self.result(key, Health.UNREACHABLE, started, error_code="connect_error", error_message=str(exc))
        status = response.status_code
        if response.is_redirect:
            return self.redirected(key, started, status)
        try:
            body = json.loads(response.content)
        except (ValueError, RecursionError):  # HTML from a proxy, a captive portal, a hostile nesting ...
            body = None
        if status >= 300 or status < 200:
            data = body.get("error", body) if isinstance(body, dict) else body
            fields = data if isinstance(data, dict) else {}
            raw_code = fields.get("code")
            code = str(raw_code) if raw_code is not None else None
            err_type = fields.get("type") if isinstance(fields.get("type"), str) else None
            message = fields.get("message")
            if not isinstance(message, str):
                message = f"Error code: {status}"
            health = classify_openai_error(status, code, err_type, message)
            return self.result(
                key, health, started,
                http_status=status,
                error_code=code or err_type,
                error_message=message,
                ratelimit=openai_ratelimit(response.headers),
                retry_after_seconds=retry_after(response.headers),
            )
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            return self.bad_response(key, started, status, "the answer has no `data` list: not the documented shape")
        return self.result(key, Health.HEALTHY, started, http_status=status,
                           ratelimit=openai_ratelimit(response.headers))

    async def aclose(self) -> None:
        self._clients.clear()
        await self._admin.aclose()


class OpenAICompatibleAdapter(OpenAIAdapter):
    """vLLM, Ollama, LM Studio, gateways: the OpenAI protocol at another base URL."""

    name = "openai_compatible"
    default_base_url = None


def _message(exc: openai.APIStatusError) -> str:
    """The provider's own words (the SDK hands over the inner `error` object as `body`)."""
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    return exc.message
