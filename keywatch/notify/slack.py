"""Slack incoming webhooks, as Block Kit messages that stay inside Slack's limits whatever the error text.

Slack refuses a whole message (400 invalid_blocks) when one block is too long, so every text is cut to
its limit here rather than trusting the size of a provider's error message.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import httpx2
from pydantic import Field

from keywatch.domain import Alert, Severity
from keywatch.notify.base import Delivery, Message
from keywatch.notify.http_sink import HttpSink, HttpSinkConfig
from keywatch.settings.types import Duration

HEADER_MAX = 150
SECTION_TEXT_MAX = 3000
FIELDS_MAX = 10
FIELD_TEXT_MAX = 2000
BLOCKS_MAX = 50
FALLBACK_MAX = 3000
CONTEXT_ELEMENTS_MAX = 10

_ICON = {
    Severity.CRITICAL: ":red_circle:",
    Severity.WARNING: ":warning:",
    Severity.INFO: ":information_source:",
}
_FIELD_ORDER = (
    ("key", "Key"),
    ("provider", "Provider"),
    ("masked", "Masked key"),
    ("fingerprint", "Fingerprint"),
    ("health", "Health"),
    ("transition", "Transition"),
    ("since", "Since"),
    ("action", "What keywatch did"),
)


def cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _mrkdwn(text: str, limit: int) -> str:
    """Escape first, then cut, so the escaped text is what respects the limit."""
    return cut(escape(text), limit)


def _headline(message: Message) -> str:
    if message.test:
        return "keywatch test alert"
    alerts = message.alerts
    if len(alerts) == 1:
        a = alerts[0]
        return ("RESOLVED: " if not a.firing else f"[{a.severity.upper()}] ") + a.title
    firing = [a for a in alerts if a.firing]
    providers = sorted({a.provider for a in alerts if a.provider})
    where = f" ({', '.join(providers)})" if providers else ""
    if firing:
        return f"[{message.severity.upper()}] {len(firing)} alerts firing{where}"
    return f"RESOLVED: {len(alerts)} alerts{where}"


def _fields(alert: Alert, since: str | None) -> list[dict[str, str]]:
    values = dict(alert.fields)
    values.setdefault("key", alert.key or "")
    values.setdefault("provider", alert.provider or "")
    if since:
        values.setdefault("since", since)
    values.setdefault("action", "nothing (alert only)")
    values["status"] = "firing" if alert.firing else "resolved"
    out = []
    for name, title in (*_FIELD_ORDER, ("status", "Status")):
        v = values.get(name)
        if v:
            out.append({"type": "mrkdwn", "text": _mrkdwn(f"*{title}*\n{v}", FIELD_TEXT_MAX)})
    return out[:FIELDS_MAX]


def render(message: Message) -> dict[str, Any]:
    """The JSON body for one message; always within Block Kit limits."""
    headline = _headline(message)
    icon = ":white_check_mark:" if not message.firing else _ICON[message.severity]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": cut(headline, HEADER_MAX), "emoji": True}}
    ]
    # Keep room for the "and N more" section and the context block.
    room = BLOCKS_MAX - 3
    shown = 0
    for alert in message.alerts:
        since = message.since.get(alert.identity)
        since_text = since.strftime("%Y-%m-%d %H:%M:%S UTC") if since else None
        needed = 2 if len(message.alerts) == 1 else 3
        if len(blocks) + needed > room:
            break
        if len(message.alerts) > 1:
            blocks.append(
                {
                    "type": "section",
                    "text": {
                        "type": "mrkdwn",
                        "text": _mrkdwn(
                            f"{'' if alert.firing else 'RESOLVED: '}{alert.title}", SECTION_TEXT_MAX
                        ),
                    },
                }
            )
        fields = _fields(alert, since_text)
        if fields:
            blocks.append({"type": "section", "fields": fields})
        if alert.summary:
            blocks.append(
                {
                    "type": "section",
                    "text": {
                        "type": "mrkdwn",
                        "text": _mrkdwn(f"*Reason*\n{alert.summary}", SECTION_TEXT_MAX),
                    },
                }
            )
        shown += 1
    if shown < len(message.alerts):
        blocks.append(
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": _mrkdwn(
                        f"…and {len(message.alerts) - shown} more alerts in this group", SECTION_TEXT_MAX
                    ),
                },
            }
        )
    context = [{"type": "mrkdwn", "text": f"{icon} keywatch"}]
    if message.dashboard_url:
        context.append({"type": "mrkdwn", "text": cut(f"<{message.dashboard_url}|Open the dashboard>", 2000)})
    blocks.append({"type": "context", "elements": context[:CONTEXT_ELEMENTS_MAX]})
    summary = message.alerts[0].summary if len(message.alerts) == 1 else ""
    # The fallback (notifications, screen readers) is mrkdwn too: escaped like the blocks, so `<!channel>`
    # or `<https://evil|x>` in a provider's error text is neither a ping nor a link there either.
    fallback = _mrkdwn(headline + (f": {summary}" if summary else ""), FALLBACK_MAX)
    return {"text": fallback, "blocks": blocks[:BLOCKS_MAX]}


class SlackSinkConfig(HttpSinkConfig):
    type: Literal["slack"] = Field(description="slack: a Slack incoming webhook (Block Kit)")
    min_interval: Duration = Field(
        "1s", description="Least time between two messages to this sink (Slack allows about one a second)"
    )


class SlackSink(HttpSink):
    type = "slack"
    config = SlackSinkConfig
    default_min_interval = 1.0

    def body(self, message: Message) -> bytes:
        return json.dumps(render(message)).encode()

    def delivered(self, response: httpx2.Response) -> Delivery:
        return Delivery(response.status_code, response.text.strip()[:100])
