"""The two GitHub API calls the receivers need: a secret scanning alert (the webhook does not carry the
secret; the REST alert object does) and the keys GitHub signs partner reports with."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx2

from keywatch.domain import Secret

REPO = re.compile(r"^[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100}$")


class GithubError(Exception):
    """A GitHub call failed; the message names the call and the status, never the token."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _headers(token: Secret | None) -> dict[str, str]:
    h = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28", "User-Agent": "keywatch"}
    if token is not None:
        h["Authorization"] = f"Bearer {token.reveal()}"
    return h


async def _get(http: httpx2.AsyncClient, url: str, token: Secret | None, what: str) -> Any:
    try:
        r = await http.get(url, headers=_headers(token))
    except Exception as exc:
        raise GithubError(f"{what}: {type(exc).__name__}") from None
    if r.status_code != 200:
        raise GithubError(f"{what}: HTTP {r.status_code}", r.status_code)
    try:
        return r.json()
    except ValueError:
        raise GithubError(f"{what}: the answer is not JSON") from None


async def fetch_alert(http: httpx2.AsyncClient, api_url: str, token: Secret, repo: str, number: int) -> dict[str, Any]:
    """GET /repos/{owner}/{repo}/secret-scanning/alerts/{number}: the alert object, `secret` included."""
    if not REPO.match(repo):
        raise GithubError(f"repository {repo[:100]!r} is not owner/name")
    data = await _get(
        http,
        f"{api_url.rstrip('/')}/repos/{repo}/secret-scanning/alerts/{int(number)}",
        token,
        f"secret scanning alert {repo}#{number}",
    )
    if not isinstance(data, dict):
        raise GithubError(f"secret scanning alert {repo}#{number}: not an alert object")
    return data


class PublicKeys:
    """GitHub's partner signing keys: the configured ones, or fetched from `url` and kept `ttl` seconds.
    An identifier not known refetches, at most once a minute (so an attacker's made-up identifiers cost
    GitHub nothing and keywatch one request a minute)."""

    REFETCH_AFTER = 60.0

    def __init__(
        self, http: httpx2.AsyncClient, url: str, ttl: float, configured: dict[str, str], token: Secret | None = None
    ) -> None:
        self.http, self.url, self.ttl, self.token = http, url, ttl, token
        self.configured = dict(configured)
        self._fetched: dict[str, str] = {}
        self._fetched_at: float | None = None

    async def get(self, identifier: str) -> str | None:
        if self.configured:
            return self.configured.get(identifier)
        now = time.monotonic()
        stale = self._fetched_at is None or now - self._fetched_at > self.ttl
        unknown = identifier not in self._fetched and (
            self._fetched_at is None or now - self._fetched_at > self.REFETCH_AFTER
        )
        if stale or unknown:
            await self._fetch(now)
        return self._fetched.get(identifier)

    async def _fetch(self, now: float) -> None:
        data = await _get(self.http, self.url, self.token, "GitHub partner public keys")
        keys = data.get("public_keys") if isinstance(data, dict) else None
        if not isinstance(keys, list):
            raise GithubError("GitHub partner public keys: no public_keys list in the answer")
        self._fetched = {
            str(k["key_identifier"]): str(k["key"])
            for k in keys
            if isinstance(k, dict) and "key_identifier" in k and "key" in k
        }
        self._fetched_at = now
