"""Secrets are masked wherever text leaves the process."""

import io
import json
import logging

import structlog

from keywatch import logging as kwlog
from keywatch.domain import fingerprint, mask
from keywatch.redact import REGISTRY, redact_text

OPENAI = "sk-proj-" + "A1b2C3d4" * 8 + "T3BlbkFJ" + "x" * 20
ANTHROPIC = "sk-ant-api03-" + "Zz9_" * 23 + "Q" + "AA"
OPENROUTER = "sk-or-v1-" + "0123456789abcdef" * 4
AWS_ID = "AKIAIOSFODNN7QWERTY2"


def test_mask_keeps_public_prefix_and_last_four() -> None:
    assert mask(OPENAI) == "sk-proj-..." + OPENAI[-4:]
    assert mask(ANTHROPIC) == "sk-ant-api03-...QAAA"[:16] + ANTHROPIC[-4:] if False else True
    assert mask(ANTHROPIC) == "sk-ant-api03-..." + ANTHROPIC[-4:]
    assert mask("short") == "****"
    assert mask("some-arbitrary-gateway-token-1234") == "so...1234"


def test_fingerprint_is_stable_and_not_the_secret() -> None:
    assert fingerprint(OPENAI) == fingerprint(OPENAI)
    assert fingerprint(OPENAI).startswith("sha256:") and OPENAI[8:20] not in fingerprint(OPENAI)


def test_key_shaped_strings_are_masked_even_when_unknown() -> None:
    text = f"errors: {OPENAI} | {ANTHROPIC} | {OPENROUTER} | {AWS_ID} | Authorization: Bearer abcdefghijklmnopqrstuvwx"
    out = redact_text(text)
    for secret in (OPENAI, ANTHROPIC, OPENROUTER, AWS_ID, "abcdefghijklmnopqrstuvwx"):
        assert secret not in out
    assert "sk-proj-..." in out


def test_loaded_secrets_of_any_shape_are_masked() -> None:
    odd = "gateway-token-7f3a9c2e11"
    REGISTRY.replace([odd])
    try:
        assert odd not in redact_text(f"upstream said {odd}!")
    finally:
        REGISTRY.replace([])


def test_log_lines_are_redacted_in_json_and_console() -> None:
    odd = "custom-secret-value-9911"
    REGISTRY.replace([odd])
    try:
        for fmt in ("json", "console"):
            buf = io.StringIO()
            kwlog.setup(fmt, "info", stream=buf)
            structlog.get_logger("t").warning("probe", detail=f"key {odd}", nested={"k": [OPENAI]})
            logging.getLogger("apscheduler").warning("job failed for %s", odd)
            try:
                raise RuntimeError(f"boom {odd}")
            except RuntimeError:
                structlog.get_logger("t").exception("crash")
            out = buf.getvalue()
            assert odd not in out and OPENAI not in out, out
            if fmt == "json":
                assert all(json.loads(line) for line in out.splitlines() if line.startswith("{"))
    finally:
        REGISTRY.replace([])
        kwlog.setup("console", "warning")
