"""Secrets are masked wherever text leaves the process."""

import io
import json
import logging

import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keywatch import logging as kwlog
from keywatch.domain import fingerprint, mask, public_prefix_length
from keywatch.redact import MIN_PART, REGISTRY, SecretRegistry, redact_text, url_secrets

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


def test_any_eight_characters_of_a_loaded_secret_are_masked() -> None:
    odd = "gw-7f3a9c2e11bbq0ZZ-token-4417x"  # no known shape: only the loaded-secret net can catch it
    REGISTRY.replace([odd])
    try:
        for quoted in (odd[:20], odd[:8], odd[5:13], odd[-8:], odd[3:-3]):
            out = redact_text(f'{{"error": "Invalid key {quoted}, check it"}}')
            assert "****" in out and quoted not in out, (quoted, out)
        assert redact_text(f"key {odd} failed") == f"key {mask(odd)} failed"
        assert redact_text(odd[:7] + " and " + odd[-7:]) == odd[:7] + " and " + odd[-7:]  # under 8: not a leak
    finally:
        REGISTRY.replace([])


def test_parts_of_secrets_passed_explicitly_are_masked_too() -> None:
    odd = "tenant-Zx81-Kq02-Lm55-token"
    assert odd[:20] not in redact_text(f"upstream quoted {odd[:20]}...", [odd])


def test_ordinary_words_and_masked_forms_are_left_alone() -> None:
    REGISTRY.replace([OPENAI, ANTHROPIC, "https://hooks.slack.com/services/T0AB12CD3/B0XY98/abcdEFGHijklMNOPqrstUVWX"])
    try:
        text = (f"probe_result key=openai-production masked={mask(OPENAI)} other={mask(ANTHROPIC)} "
                f"fingerprint={fingerprint(OPENAI)} posting to https://hooks.slack.com/services (incoming-webhooks)")
        assert redact_text(text) == text
    finally:
        REGISTRY.replace([])


def test_a_url_is_masked_whole_and_by_its_token_like_pieces() -> None:
    url = "https://bot:pa55-w0rd-xyz@hooks.example.com/api/hook/Tk9aB3xYz0QwErTy?sig=Zq81xx00aa&v=2&kind=alerts"
    assert url_secrets(url) == ["pa55-w0rd-xyz", "Tk9aB3xYz0QwErTy", "Zq81xx00aa"]
    assert url_secrets("http://127.0.0.1:9093/api/v2/alerts") == []
    assert url_secrets("https://hooks.slack.com/services/T0AB12CD3/B0XY98/abcdEFGHijklMNOPqrstUVWX") == [
        "T0AB12CD3", "abcdEFGHijklMNOPqrstUVWX"]
    REGISTRY.replace([url])
    try:
        out = redact_text(f"sent to {url}; answer: Cannot POST /api/hook/Tk9aB3xYz0QwErTy?sig=Zq81xx00aa")
        assert out == f"sent to {mask(url)}; answer: Cannot POST /api/hook/****?sig=****", out
    finally:
        REGISTRY.replace([])


def test_the_log_path_masks_prefixes_of_secrets_among_many() -> None:
    """1,000 managed secrets, 2,000 log lines quoting 20-character prefixes: none survives (the cost is
    measured by tests/bench/bench_redact.py, not here)."""
    import random
    import string

    rng = random.Random(1)
    secrets = ["gw-" + "".join(rng.choices(string.ascii_letters + string.digits, k=40)) for _ in range(1000)]
    registry = SecretRegistry()
    registry.replace(secrets)
    lines = [json.dumps({"event": "probe_result", "key": f"key-{i:05d}", "masked": mask(secrets[i % 1000]),
                         "fingerprint": fingerprint(secrets[i % 1000]), "error": f"401 bad key {secrets[i % 1000][:20]}"
                         if i % 10 == 0 else "ok", "timestamp": "2025-01-01T00:00:00.000000Z"}) for i in range(2000)]
    out = [registry.redact(line) for line in lines]
    assert not any(s[:20] in line for s, line in zip(secrets * 2, out, strict=False))


def test_secrets_added_one_at_a_time_are_all_masked_and_other_text_is_left_alone() -> None:
    """Secrets loaded one after another (a secret store's, a rotation's new key) outgrow the index's first
    table, which is then built again for them all: the first and the last are masked in part alike, a URL's
    pieces too, and 200,000 characters of text that quote none of them come out unchanged."""
    import random
    import string

    rng = random.Random(7)
    alphabet = string.ascii_letters + string.digits
    secrets = ["sk-proj-" + "".join(rng.choices(alphabet, k=60)) for _ in range(400)]
    url = "https://hooks.example.com/hook/" + "".join(rng.choices(alphabet, k=24))
    registry = SecretRegistry()
    registry.replace(secrets[:2])
    for s in [*secrets[2:200], url, *secrets[200:]]:
        registry.add([s])
    for s in (secrets[0], secrets[1], secrets[150], secrets[-1]):
        for part in (s[8:16], s[30:38], s[-8:]):
            out = registry.redact(f"upstream said: bad key {part}!")
            assert part not in out and "****" in out, (part, out)
    assert registry.redact(f"posting to {url}") == f"posting to {mask(url)}"
    assert url.rsplit("/", 1)[1] not in registry.redact(f"404 for /hook/{url.rsplit('/', 1)[1]}")
    plain = " ".join("".join(rng.choices(alphabet, k=rng.randint(8, 40))) for _ in range(8000))
    assert registry.redact(plain) == plain


def test_every_text_of_a_probe_result_is_masked_the_error_code_too() -> None:
    from datetime import UTC, datetime

    from keywatch.domain import Health, ManagedKey, ProbeResult, Secret
    from keywatch.engine.prober import scrubbed

    odd = "gw-Qm81Zx44Lp09Rt77Vb"
    key = ManagedKey(name="k", provider="openai_compatible", secret=Secret(odd), secret_ref="env:X")
    result = ProbeResult("k", "openai_compatible", Health.FORBIDDEN, datetime.now(UTC), 1.0,
                         error_code=f"key_{odd}_denied", error_message=f"first 12: {odd[:12]}")
    clean = scrubbed(result, key)
    assert odd[:8] not in f"{clean.error_code} {clean.error_message}", clean
    assert clean.health == Health.FORBIDDEN and scrubbed(clean, key) is clean


def test_registries_do_not_share_what_they_mask() -> None:
    """A secret added to one registry is masked by it, not by another one created before or after."""
    first, second = SecretRegistry(), SecretRegistry()
    first.add(["gw-Zx81Kq02Lm55token"])
    assert "gw-Zx81Kq02Lm55" not in first.redact("bad gw-Zx81Kq02Lm55")
    second.add(["Lm55-Kq02-Zx81-gwgw"])  # the same characters, none of the same windows
    assert second.redact("bad gw-Zx81Kq02Lm55") == "bad gw-Zx81Kq02Lm55"
    third = SecretRegistry()
    third.add(["Lm55-Kq02-Zx81-wgwg"])
    assert third.redact("bad gw-Zx81Kq02Lm55") == "bad gw-Zx81Kq02Lm55"


_BODY = "ab01-"  # few characters: secrets share pieces and repeat them, as the index must handle
_PREFIXES = ("", "sk-proj-", "sk-ant-api03-", "gw-")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    secrets=st.lists(st.tuples(st.sampled_from(_PREFIXES), st.text(_BODY, min_size=8, max_size=60)),
                     min_size=1, max_size=8),
    pieces=st.lists(st.tuples(st.integers(0, 7), st.integers(0, 80), st.integers(1, 40),
                              st.text(_BODY + ' .:/"', max_size=6)), max_size=12),
    one_at_a_time=st.booleans(),
)
def test_no_eight_characters_of_a_secret_past_its_public_prefix_survive(
    secrets: list[tuple[str, str]], pieces: list[tuple[int, int, int, str]], one_at_a_time: bool
) -> None:
    """Against the plain definition: any 8 characters in a row of a loaded secret that hold one or more past
    its public prefix (which masked forms show) are masked, wherever they are and whatever is next to them,
    for secrets that share pieces, repeat them and are loaded at once or one at a time."""
    loaded = [prefix + body for prefix, body in secrets]
    registry = SecretRegistry()
    if one_at_a_time:
        for s in loaded:
            registry.add([s])
    else:
        registry.replace(loaded)
    texts = ["".join(loaded[n % len(loaded)][at:at + size] + filler for n, at, size, filler in pieces)]
    first = loaded[0]  # and each of its runs of 8 to 11 characters alone, those at its prefix's end among them
    texts += [f" {first[at:at + size]} " for size in range(MIN_PART, MIN_PART + 4) for at in range(len(first))]
    texts += [first[:at] + ("b" if first[at] == "a" else "a") + first[at + 1:] for at in range(len(first))]  # a typo
    for text in texts:
        out = registry.redact(text)
        for s in loaded:
            for o in range(max(0, public_prefix_length(s) - MIN_PART + 1), len(s) - MIN_PART + 1):
                assert s[o:o + MIN_PART] not in out, (s, o, text, out)
