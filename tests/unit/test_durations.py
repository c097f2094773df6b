import pytest

from keywatch.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("6m0s", 360), ("1s", 1), ("12ms", 0.012), ("1h2m3.5s", 3723.5), ("5m", 300), ("250ms", 0.25), ("2", 2),
     ("1d", 86400), ("0.5s", 0.5), ("100us", 0.0001)],
)
def test_go_and_config_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5 minutes", "m5", "1h-2m", "5x", "1.2.3s"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_format_round_trips() -> None:
    for s in (0.25, 1, 59, 60, 3723, 86400 + 61):
        assert parse_duration(format_duration(s)) == pytest.approx(round(s) if s >= 1 else s)
