"""The fault suite: each scenario breaks something keywatch promises to survive (a provider, the database,
a sink, the process itself, the input) and asserts the promise held. Each prints one figure line at the end
of the run (`figure("name", "what was survived ...")`), so the run shows what was tried and what held."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.integration.conftest import *  # noqa: F403  (the simulator and helpers the scenarios share)

FIGURES: list[tuple[str, str]] = []


@pytest.fixture
def figure() -> Callable[[str, str], None]:
    def record(scenario: str, line: str) -> None:
        FIGURES.append((scenario, line))

    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.section("fault suite figures")
        for scenario, line in FIGURES:
            terminalreporter.write_line(f"{scenario}: {line}")
