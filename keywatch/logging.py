"""structlog set-up: JSON lines for journald, readable lines on a terminal, secrets masked in both.

Standard-library loggers (APScheduler, aiohttp, alembic) go through the same processors, so nothing
reaches stderr unredacted.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def without_modules(*names: str) -> Iterator[None]:
    """Imports inside see `names` as not installed (unless already loaded); after it, they import as before.

    For libraries that load a heavy optional extra at their own import, for a feature keywatch never uses:
    structlog loads rich and pygments for pretty tracebacks (`setup` formats them plainly), alembic's mako
    loads pygments to highlight template errors. Hidden, they cost ~10 MB and 100 modules less."""
    hidden = [n for n in names if n not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


with without_modules("rich", "pygments", "better_exceptions"):
    import structlog

from keywatch.redact import REGISTRY  # noqa: E402


def _redact(value: Any) -> Any:
    if isinstance(value, str):
        return REGISTRY.redact(value)
    if isinstance(value, dict):
        return {k: _redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redact(v) for v in value)
    if isinstance(value, BaseException):
        return REGISTRY.redact(f"{type(value).__name__}: {value}")
    return value


def redact_processor(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    return {k: _redact(v) for k, v in event_dict.items()}


def _format_exc_redacted(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Render tracebacks to text first, then mask them like any other field."""
    event_dict = structlog.processors.format_exc_info(_, __, event_dict)
    if "exception" in event_dict:
        event_dict["exception"] = REGISTRY.redact(event_dict["exception"])
    return event_dict


def setup(fmt: str = "auto", level: str = "info", stream: Any = None) -> None:
    stream = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.ExtraAdder(),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty(), exception_formatter=structlog.dev.plain_traceback)
    )
    structlog.configure(
        # Level check first: a debug call costs nothing when debug is off (thousands per cycle at scale).
        processors=[structlog.stdlib.filter_by_level, *shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _format_exc_redacted if use_json else _noop,
            redact_processor,
            _redacting(renderer),
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("apscheduler", "aiohttp.access", "httpx", "httpx2", "httpcore", "openai", "alembic", "botocore",
                  "urllib3", "azure"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def _redacting(renderer: Any) -> Any:
    """Mask the rendered line too: console renderers format tracebacks after the processors ran."""

    def render(logger: Any, name: str, event_dict: dict[str, Any]) -> str:
        return REGISTRY.redact(renderer(logger, name, event_dict))

    return render


def _noop(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    return event_dict
