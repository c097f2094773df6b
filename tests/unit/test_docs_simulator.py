"""docs/simulator.md names every key behaviour and every route the simulator serves, read from the simulator."""

from __future__ import annotations

import re
from pathlib import Path

from keywatch.sim import BEHAVIOURS, SimState, build_app

PAGE = Path(__file__).resolve().parents[2] / "docs" / "simulator.md"


def section(text: str, heading: str) -> str:
    body = text.split(f"\n## {heading}\n", 1)[1]
    return body.split("\n## ", 1)[0]


def test_every_behaviour_has_a_row():
    rows = set(re.findall(r"^\| `([a-z_]+)` \|", section(PAGE.read_text(encoding="utf-8"), "Behaviours"), re.M))
    assert not BEHAVIOURS - rows, f"docs/simulator.md does not describe behaviours: {sorted(BEHAVIOURS - rows)}"
    stale = sorted(rows - BEHAVIOURS)
    assert not stale, f"docs/simulator.md describes behaviours the simulator lacks: {stale}"


def test_every_route_is_listed_with_its_methods():
    table = section(PAGE.read_text(encoding="utf-8"), "Routes")
    listed: dict[str, set[str]] = {}
    for methods, paths in re.findall(r"^\| ([A-Z, ]+) \| (.+) \|$", table, re.M):
        for path in re.findall(r"`([^`]+)`", paths):
            listed.setdefault(path, set()).update(m.strip() for m in methods.split(","))
    served: dict[str, set[str]] = {}
    for route in build_app(SimState()).router.routes():
        if route.method != "HEAD" and route.resource is not None:
            served.setdefault(route.resource.canonical, set()).add(route.method)
    assert listed == served, (
        f"docs/simulator.md routes differ from the simulator's: missing {sorted(set(served) - set(listed))}, "
        f"stale {sorted(set(listed) - set(served))}, "
        f"methods {sorted(p for p in served if p in listed and served[p] != listed[p])}"
    )
