"""The explicit list of sink types, and from `[[alerts.sinks]]` to sink objects.

Each entry names a sink class ("module:Class"); the class carries its config model (`config`), and the
models make the `type`-discriminated union that `[[alerts.sinks]]` validates against. Adding a sink type
is adding its module and one line to SINKS.
"""

from __future__ import annotations

import functools
import importlib
import operator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import httpx2
from pydantic import Field, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from keywatch.notify.base import Sink, SinkBase, SinkConfigBase, SinkHttp
from keywatch.redact import is_url, url_secrets
from keywatch.tls import verified_context

if TYPE_CHECKING:
    from keywatch.notify.config import AlertsConfig

SINKS: list[str] = [
    "keywatch.notify.slack:SlackSink",
    "keywatch.notify.webhook:WebhookSink",
    "keywatch.notify.alertmanager:AlertmanagerSink",
    "keywatch.notify.console:ConsoleSink",
]


def _load(path: str) -> type[SinkBase]:
    module, _, name = path.partition(":")
    cls: type[SinkBase] = getattr(importlib.import_module(module), name)
    if cls.type != cls.config.type_name():
        raise TypeError(f"{path}: type {cls.type!r} but its config's type is {cls.config.type_name()!r}")
    return cls


SINK_CLASSES: dict[str, type[SinkBase]] = {cls.type: cls for cls in map(_load, SINKS)}
SinkConfig = Annotated[
    functools.reduce(operator.or_, [cls.config for cls in SINK_CLASSES.values()]),
    Field(discriminator="type"),
]
_SECRET_FIELDS = {f for cls in SINK_CLASSES.values() for f in cls.config.secret_fields}


def _types_with(field_name: str) -> list[str]:
    return [t for t, cls in SINK_CLASSES.items() if field_name in cls.config.model_fields]


def _one_of(names: list[str], word: str = "or") -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {word} {names[-1]}"


def sink_errors(exc: ValidationError) -> ValidationError:
    """The union's errors with the paths and words of a plain field: `sinks[1].url`, not
    `sinks[1].webhook.url`; an unknown type is an error of `type`; a field another sink type uses says so."""
    out: list[InitErrorDetails] = []
    for err in exc.errors(include_url=False):
        loc, kind, ctx, value = err["loc"], err["type"], err.get("ctx") or {}, err["input"]
        error: Any = kind
        if len(loc) >= 2 and isinstance(loc[0], int) and loc[1] in SINK_CLASSES:
            sink_type, loc = loc[1], (loc[0], *loc[2:])
            name = str(loc[1]) if len(loc) >= 2 else ""
            if name in _SECRET_FIELDS and len(loc) > 2:  # inside a list of references: `secret[1]`
                loc = (*loc[:2], *(x for x in loc[2:] if isinstance(x, int)))
            if name in _SECRET_FIELDS:
                value = "****"  # a URL that grants posting, or a signing key, must not reach an error's text
            if kind == "missing" and name:
                error = PydanticCustomError("sink_field", f"{name} is required for a {sink_type} sink")
            elif kind == "extra_forbidden" and _types_with(name):
                users = _one_of(_types_with(name), "and")
                error = PydanticCustomError("sink_field", f"{name} is only used by {users} sinks, not {sink_type}")
        elif kind == "union_tag_invalid" and len(loc) == 1:
            loc, value = (*loc, "type"), ctx.get("tag")
            error, ctx = "literal_error", {"expected": _one_of([repr(t) for t in SINK_CLASSES])}
        elif kind == "union_tag_not_found" and len(loc) == 1:
            loc, error = (*loc, "type"), "missing"
        if isinstance(value, dict):  # a whole entry, e.g. the input of a missing field
            value = {k: "****" if k in _SECRET_FIELDS else v for k, v in value.items()}
        out.append(InitErrorDetails(type=error, loc=loc, input=value, ctx=ctx))
    return ValidationError.from_exception_data(exc.title, out)


class SinkConfigError(Exception):
    """Sink secrets that cannot be resolved; each problem names the field and never the secret."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class SinkClient:
    """The pool the sinks share, opened at their first request: a daemon whose alerts go to the log only
    never builds it (httpx2's transport with httpcore2, h11 and anyio stay unloaded, about 1 MB). Redirects
    are refused, so a webhook URL cannot bounce a signed body elsewhere."""

    def __init__(self) -> None:
        self._client: httpx2.AsyncClient | None = None

    def _open(self) -> httpx2.AsyncClient:
        if self._client is None:
            self._client = httpx2.AsyncClient(
                timeout=httpx2.Timeout(10.0),
                follow_redirects=False,
                limits=httpx2.Limits(max_connections=20, max_keepalive_connections=10),
                verify=verified_context(),
            )
        return self._client

    async def post(self, url: str, **kwargs: Any) -> httpx2.Response:
        return await self._open().post(url, **kwargs)

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


@dataclass(frozen=True)
class SinkSpec:
    """One sink's config with its secrets resolved: two equal specs make the same sink, so a reload can
    tell a sink that changed (new webhook URL in the same file, say) from one that did not."""

    config: Any  # one of the SinkConfig models
    resolved: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    @property
    def name(self) -> str:
        return str(self.config.name)

    def value(self, field_name: str) -> Any:
        """A field as the sink uses it: the secret's value for a secret reference."""
        return dict(self.resolved).get(field_name, getattr(self.config, field_name, None))

    @property
    def destination(self) -> tuple[Any, ...]:
        """What decides where messages go and how they are signed: a change here gives a broken sink
        a fresh start."""
        resolved = dict(self.resolved)
        out: list[Any] = [self.config.type]
        for f in self.config.destination_fields:
            many = tuple(v for k, v in self.resolved if k.startswith(f + "["))
            out.append((resolved.get(f, getattr(self.config, f, None)), *many) if many else self.value(f))
        return tuple(out)

    def secrets(self) -> list[str]:
        """What the redactor must mask: each resolved secret, and the token-like pieces (user info, path
        segments, query values) of every URL the sink is configured with, a secret or not, since a receiver
        that quotes its own path (`Cannot POST /hook/<token>`) must not put the token in an alert."""
        out = [v for _, v in self.resolved if v]
        values = [*out, *(v for v in vars(self.config).values() if isinstance(v, str))]
        out += [p for v in values if is_url(v) for p in url_secrets(v)]
        return list(dict.fromkeys(out))

    def build(self, http: SinkHttp) -> Sink:
        return SINK_CLASSES[self.config.type].from_config(self.config, dict(self.resolved), http)


def resolve_secrets(config: SinkConfigBase, where: str, allow_literal: bool) -> tuple[dict[str, str], list[str]]:
    """The values of one sink's secret references, and a problem for each that failed (never its value)."""
    from keywatch.settings import secrets

    values: dict[str, str] = {}
    problems: list[str] = []
    for field_name in config.secret_fields:
        ref = getattr(config, field_name)
        if ref is None:
            continue
        refs = [ref] if isinstance(ref, str) else list(ref)
        for i, one in enumerate(refs):
            # A list (secrets while one rotates) is kept as `secret`, `secret[1]`, ... in list order.
            name = field_name if i == 0 else f"{field_name}[{i}]"
            at = f"{where}.{field_name}" + (f"[{i}]" if not isinstance(ref, str) else "")
            try:
                value = secrets.resolve(one, allow_literal=allow_literal).reveal()
            except secrets.SecretError as exc:
                problems.append(f"{at}: sink {config.name!r}: {exc}")
                continue
            problem = config.check_secret(field_name, value)
            if problem:
                problems.append(f"{at}: sink {config.name!r}: the secret from {one}: {problem}")
                continue
            values[name] = value
    return values, problems


def resolve_sinks(config: AlertsConfig, *, allow_literal: bool = False) -> list[SinkSpec]:
    """Every sink's secrets, or SinkConfigError listing each reference that failed (by field, never by
    value)."""
    problems: list[str] = []
    specs: list[SinkSpec] = []
    for i, c in enumerate(config.sinks):
        values, failed = resolve_secrets(c, f"alerts.sinks[{i}]", allow_literal)
        problems += failed
        specs.append(SinkSpec(c, tuple(values.items())))
    if problems:
        raise SinkConfigError(problems)
    return specs


def build_sinks(
    config: AlertsConfig, http: SinkHttp, *, allow_literal: bool = False
) -> tuple[list[Sink], list[str]]:
    """The sinks and the secret values they hold (for the log redactor). Raises SinkConfigError."""
    specs = resolve_sinks(config, allow_literal=allow_literal)
    return [s.build(http) for s in specs], [v for s in specs for v in s.secrets()]
