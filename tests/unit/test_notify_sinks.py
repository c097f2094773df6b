"""Sink payloads: Slack messages stay within Block Kit limits whatever the error text; webhook signatures
verify with the documented recipe and fail when anything is changed; sink config errors name the field."""

from __future__ import annotations

import base64
import json
import re
import time
from datetime import UTC, datetime

import httpx2
import pytest

from keywatch.domain import Alert, Severity
from keywatch.notify import slack
from keywatch.notify.base import Message, SinkError, mask_url, parse_retry_after
from keywatch.notify.webhook import payload, sign, verify
from keywatch.settings.loader import ConfigError, parse

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def alert(i: int = 0, summary: str = "401 invalid_api_key", firing: bool = True) -> Alert:
    return Alert(
        f"key_health:k{i}",
        Severity.CRITICAL,
        firing,
        f"key k{i} (openai) is invalid " + "x" * 300,
        summary,
        NOW,
        key=f"k{i}",
        provider="openai",
        fields={
            "masked": "sk-proj-...GDYA",
            "fingerprint": "sha256:0123456789ab",
            "health": "invalid",
            "transition": "healthy → invalid",
            "action": "disabled the key " + "y" * 3000,
            "extra1": "z" * 5000,
        },
    )


def check_block_kit(body: dict) -> None:
    assert body["text"] and len(body["text"]) <= 3000
    blocks = body["blocks"]
    assert len(blocks) <= 50
    for b in blocks:
        if b["type"] == "header":
            assert len(b["text"]["text"]) <= 150
        if b["type"] == "section":
            if "text" in b:
                assert len(b["text"]["text"]) <= 3000
            if "fields" in b:
                assert len(b["fields"]) <= 10
                assert all(len(f["text"]) <= 2000 for f in b["fields"])
        if b["type"] == "context":
            assert len(b["elements"]) <= 10


def test_huge_error_message_stays_within_block_kit_limits() -> None:
    huge = "<provider said> & " + "E" * 100_000
    body = slack.render(
        Message(1, [alert(summary=huge)], {"key_health:k0": NOW}, "https://grafana.example/d/kw")
    )
    check_block_kit(body)
    text = json.dumps(body)
    assert "&lt;provider said&gt; &amp;" in text  # escaped for mrkdwn
    assert "sk-proj-...GDYA" in text and "sha256:0123456789ab" in text and "grafana.example" in text
    assert "2026-03-02 09:00:00 UTC" in text  # since when


def test_a_group_of_200_alerts_is_one_message_within_limits() -> None:
    body = slack.render(Message(1, [alert(i, summary="E" * 5000) for i in range(200)]))
    check_block_kit(body)
    assert "more alerts in this group" in json.dumps(body)
    assert "200 alerts firing" in body["blocks"][0]["text"]["text"]


def test_resolved_message_says_so() -> None:
    body = slack.render(Message(1, [alert(firing=False)]))
    assert body["blocks"][0]["text"]["text"].startswith("RESOLVED")


def test_signature_verifies_and_fails_when_anything_is_changed() -> None:
    secret = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
    message = Message(7, [alert()])
    body = json.dumps(payload(message)).encode()
    t = int(time.time())
    headers = {"webhook-id": message.delivery_id, "webhook-timestamp": str(t),
               "webhook-signature": sign([secret], message.delivery_id, t, body)}
    assert verify(secret, body, headers)
    assert not verify(secret, body.replace(b"k0", b"k1"), headers)
    assert not verify("whsec_" + base64.b64encode(b"y" * 32).decode(), body, headers)
    assert not verify(secret, body, {**headers, "webhook-timestamp": str(t + 1)})
    assert not verify(secret, body, {**headers, "webhook-id": "msg_other"})
    stale = {**headers, "webhook-timestamp": str(t - 3600),
             "webhook-signature": sign([secret], message.delivery_id, t - 3600, body)}
    assert not verify(secret, body, stale)
    assert not verify(secret, body, {"webhook-signature": "garbage"})
    assert message.delivery_id != Message(7, [alert()]).delivery_id  # the same row number, another id


def test_urls_are_masked_and_retry_after_is_read() -> None:
    masked = mask_url("https://hooks.slack.com/services/T000/B000/XXXXSECRETXXXX")
    assert "SECRET" not in masked and masked.startswith("https://hooks.slack.com/services/")
    assert "pw" not in mask_url("https://user:pw@example.com/hook/abc")
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Mon, 02 Mar 2026 09:00:30 GMT", now=NOW) == 30.0
    assert parse_retry_after("soon") is None


SINK = '[[alerts.sinks]]\nname = "s"\n'
BAD = [
    (SINK + 'type = "pagerduty"\n', "alerts.sinks[0].type", "'pagerduty' is not allowed"),
    (SINK + 'type = "slack"\n', "alerts.sinks[0]", "url is required for a slack sink"),
    (
        SINK + 'type = "slack"\nurl = "https://hooks.slack.com/services/T/B/X"\n',
        "alerts.sinks[0]",
        "URL is a secret",
    ),
    (SINK + 'type = "console"\nsecret = "env:X"\n', "alerts.sinks[0]", "secret is only used by webhook"),
    (SINK + 'type = "console"\ncolour = "red"\n', "alerts.sinks[0].colour", "unknown field"),
    (
        SINK + 'type = "console"\n' + SINK + 'type = "console"\n',
        "alerts",
        "sinks[1].name: 's' is already used",
    ),
    (SINK + 'type = "console"\n[[alerts.routes]]\nsinks = ["nope"]\n', "alerts", "no sink named 'nope'"),
    ('[alerts]\nrepeat_interval = "often"\n', "alerts.repeat_interval", "not a duration"),
    (
        SINK + 'type = "console"\nmin_severity = "urgent"\n',
        "alerts.sinks[0].min_severity",
        "'urgent' is not allowed",
    ),
]


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text, "bad.toml")
    return info.value.problems


@pytest.mark.parametrize(("text", "where", "reason"), BAD, ids=[b[2] for b in BAD])
def test_bad_alert_config_names_field_and_reason(text: str, where: str, reason: str) -> None:
    found = problems(text)
    assert any(p.startswith(where) and reason in p for p in found), found


MORE_BAD = [
    (SINK + 'type = "console"\nurl = "env:X"\n', "alerts.sinks[0].url", "only used by slack, webhook and"),
    (
        SINK + 'type = "slack"\nurl = "env:X"\nresend_interval = "1s"\n',
        "alerts.sinks[0].resend_interval",
        "only used by alertmanager sinks, not slack",
    ),
    (SINK, "alerts.sinks[0].type", "is required"),
    (SINK + 'type = "webhook"\n', "alerts.sinks[0].url", "url is required for a webhook sink"),
    (
        SINK + 'type = "alertmanager"\nurl = "127.0.0.1:9093"\n',
        "alerts.sinks[0].url",
        "expected the Alertmanager base URL",
    ),
    (
        SINK + 'type = "console"\n[[alerts.sinks]]\nname = "t"\ntype = "slack"\nurl = "env:X"\ntimeout = "x"\n',
        "alerts.sinks[1].timeout",
        "not a duration",
    ),
]


@pytest.mark.parametrize(("text", "where", "reason"), MORE_BAD, ids=[b[2] for b in MORE_BAD])
def test_sink_config_errors_name_the_field_of_the_sink_type(text: str, where: str, reason: str) -> None:
    found = problems(text)
    assert any(p.startswith(f"{where}: ") and reason in p for p in found), found


def test_sink_types_take_their_own_defaults() -> None:
    sinks = parse(
        SINK + 'type = "slack"\nurl = "env:X"\n' + '[[alerts.sinks]]\nname = "am"\ntype = "alertmanager"\n'
        'url = "http://127.0.0.1:9093"\n'
    ).alerts.sinks
    assert (sinks[0].min_interval, sinks[0].timeout) == (1.0, 10.0)
    assert (sinks[1].min_interval, sinks[1].resend_interval) == (0.0, 60.0)


def test_example_documents_every_field_of_every_sink_type() -> None:
    """The example mentions each sink type and each of their fields (the config test's walk of the schema
    does not look inside the union of sink types)."""
    from pathlib import Path

    from keywatch.notify.registry import SINK_CLASSES

    text = (Path(__file__).parents[2] / "config" / "keywatch.example.toml").read_text()
    missing = [
        f"{t}.{name}"
        for t, cls in SINK_CLASSES.items()
        for name in cls.config.model_fields
        if not re.search(rf"^#?\s*{name}\s*=", text, re.M)
    ]
    missing += [t for t in SINK_CLASSES if t not in text]
    assert not missing, f"config/keywatch.example.toml does not mention: {missing}"


# -- the HTTP sinks read answers alike ---------------------------------------------------------------
SECRET_URL = "https://hooks.example.com/services/T0/B0/VERYSECRETTOKEN"
HMAC = "whsec-0123456789-secret"


def http_sinks(handler):
    from keywatch.notify.alertmanager import AlertmanagerSink
    from keywatch.notify.slack import SlackSink
    from keywatch.notify.webhook import WebhookSink

    client = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    return client, [
        SlackSink("slack", SECRET_URL, client),
        WebhookSink("hook", SECRET_URL, client, secret=HMAC),
        AlertmanagerSink("am", "http://127.0.0.1:9093/", client),
    ]


ANSWERS = [
    (200, {}, None, None),
    (202, {}, None, None),
    (429, {"Retry-After": "7"}, False, 7.0),
    (503, {"Retry-After": "2"}, False, 2.0),
    (500, {}, False, None),
    (408, {}, False, None),
    (400, {}, True, None),
    (403, {}, True, None),
    (404, {}, True, None),
    (410, {}, True, None),
]


@pytest.mark.parametrize(("status", "headers", "permanent", "retry_after"), ANSWERS, ids=[str(a[0]) for a in ANSWERS])
async def test_http_sinks_classify_answers_alike(status, headers, permanent, retry_after) -> None:
    seen = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        signed = "webhook-signature" in request.headers
        return httpx2.Response(status, headers=headers, text=f"no_service {request.url} {HMAC if signed else ''}")

    client, sinks = http_sinks(handler)
    try:
        for sink in sinks:
            if permanent is None:
                assert (await sink.send(Message(3, [alert()]))).status == status
                continue
            with pytest.raises(SinkError) as info:
                await sink.send(Message(3, [alert()]))
            err = info.value
            assert (err.permanent, err.retry_after, err.status) == (permanent, retry_after, status), sink.type
            assert "VERYSECRETTOKEN" not in str(err) and HMAC not in str(err)
    finally:
        await client.aclose()
    assert [str(r.url) for r in seen] == [SECRET_URL, SECRET_URL, "http://127.0.0.1:9093/api/v2/alerts"]
    assert all(r.headers["content-type"] == "application/json" for r in seen)
    slack_body, hook_body, am_body = (json.loads(r.content) for r in seen)
    assert slack_body["blocks"][0]["type"] == "header"
    assert verify(HMAC, seen[1].content, seen[1].headers)
    assert hook_body["id"] == seen[1].headers["webhook-id"] and hook_body["id"].startswith("msg_")
    assert am_body[0]["labels"]["alertname"] == "KeywatchKeyInvalid" and "endsAt" not in am_body[0]
    assert am_body[0]["labels"]["health"] == "invalid"


async def test_http_sink_transport_errors_are_transient_and_never_carry_the_url() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError(f"cannot connect to {request.url}", request=request)

    client, sinks = http_sinks(handler)
    try:
        for sink in sinks:
            with pytest.raises(SinkError) as info:
                await sink.send(Message(1, [alert()]))
            assert not info.value.permanent and info.value.status is None
            assert "VERYSECRETTOKEN" not in str(info.value) and "://" not in str(info.value)
            assert "VERYSECRETTOKEN" not in sink.describe()
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    "sink",
    [
        {"type": "slack", "url": "https://hooks.slack.com/services/T0/B0/LEAKYTOKEN"},
        {"type": "console", "secret": "LEAKYTOKEN-hmac"},
        {"type": "webhook", "url": "env:X", "secret": [{"ref": "LEAKYTOKEN"}]},
        {"type": "webhook", "secret": "LEAKYTOKEN-hmac"},
        {"type": "pagerduty", "url": "https://events.example/LEAKYTOKEN"},
    ],
)
def test_sink_config_errors_never_show_a_secret_value(sink: dict) -> None:
    from pydantic import ValidationError

    from keywatch.notify.config import AlertsConfig

    with pytest.raises(ValidationError) as info:
        AlertsConfig.model_validate({"sinks": [{"name": "s", **sink}]})
    assert "LEAKYTOKEN" not in str(info.value) and "LEAKYTOKEN" not in repr(info.value.errors())


async def test_an_answer_quoting_the_path_of_the_url_never_carries_its_token() -> None:
    token = "q8ZbT2wX9kLm4NpR"
    url = f"https://hooks.example.com/hook/{token}?sig=Sg7hJ2kL9mNq"

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(404, text=f"Cannot POST {request.url.raw_path.decode()}")

    from keywatch.notify.webhook import WebhookSink

    client = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    try:
        with pytest.raises(SinkError) as info:
            await WebhookSink("hook", url, client, secret=HMAC).send(Message(1, [alert()]))
    finally:
        await client.aclose()
    text = str(info.value)
    assert info.value.permanent and text.startswith("HTTP 404: Cannot POST /hook/****"), text
    assert token[:8] not in text and "Sg7hJ2kL" not in text


def test_resolved_sinks_register_every_token_like_piece_of_their_urls(monkeypatch) -> None:
    from keywatch.notify.config import AlertsConfig
    from keywatch.notify.registry import resolve_sinks

    monkeypatch.setenv("KW_T_HOOK", "https://hooks.example.com/hook/q8ZbT2wX9kLm4NpR?sig=Sg7hJ2kL9mNq")
    monkeypatch.setenv("KW_T_SLACK", "https://hooks.slack.com/services/T0AB12CD3/B0XY98/abcdEFGHijklMNOPqrstUVWX")
    config = AlertsConfig.model_validate({"sinks": [
        {"name": "hook", "type": "webhook", "url": "env:KW_T_HOOK"},
        {"name": "slack", "type": "slack", "url": "env:KW_T_SLACK"},
        {"name": "am", "type": "alertmanager", "url": "https://keywatch:Am-pass-9921@am.example.com:9093/api"},
    ]})
    hook, slack_spec, am = (s.secrets() for s in resolve_sinks(config))
    assert hook == ["https://hooks.example.com/hook/q8ZbT2wX9kLm4NpR?sig=Sg7hJ2kL9mNq", "q8ZbT2wX9kLm4NpR",
                    "Sg7hJ2kL9mNq"]
    assert slack_spec[1:] == ["T0AB12CD3", "abcdEFGHijklMNOPqrstUVWX"]  # not `services`, nor the host
    assert am == ["Am-pass-9921"]  # the URL is not a secret, its password is
