"""docs/configuration.md covers the config schema: every field, with the schema's default.

The schema is walked generically (the JSON Schema `keywatch config schema` prints), so a new field, section
or action type fails here until the page documents it. A field counts as documented when its dotted path
appears in backticks (`probe.interval`, `keys[].name`) or when it is a row of the table under a heading that
names its parent (`[probe]`, `[[alerts.sinks]]`, `policies.when`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from keywatch.settings.schema import json_schema

PAGE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
_MISSING = object()


def _deref(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = schema["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def schema_fields(schema: dict[str, Any]) -> dict[str, list[Any]]:
    """Dotted path (lists and unions flattened, `[]` dropped) -> the defaults the schema gives it."""
    out: dict[str, list[Any]] = {}

    def walk(node: dict[str, Any], prefix: str, seen: frozenset[str]) -> None:
        ref = node.get("$ref")
        if ref in seen:
            return
        seen = seen | {ref} if ref else seen
        node = _deref(schema, node)
        for key in ("anyOf", "oneOf", "allOf"):
            for sub in node.get(key, []):
                walk(sub, prefix, seen)
        if isinstance(node.get("items"), dict):
            walk(node["items"], prefix, seen)
        for name, prop in node.get("properties", {}).items():
            path = f"{prefix}.{name}" if prefix else name
            out.setdefault(path, []).append(prop.get("default", _MISSING))
            walk(prop, path, seen)

    walk(schema, "", frozenset())
    return out


def _normalise(token: str) -> str:
    """`[[alerts.sinks]]`, `alerts.sinks[]`, `[daemon]` -> `alerts.sinks`, `daemon`."""
    return token.strip().strip("[]").replace("[]", "")


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def page_tables(text: str) -> tuple[set[str], dict[str, dict[str, str | None]]]:
    """(paths named by headings, {heading path: {field: its default cell or None}})."""
    headings: set[str] = set()
    tables: dict[str, dict[str, str | None]] = {}
    current: list[str] = []
    default_col: int | None = None
    header_next = False
    for line in text.splitlines():
        if line.startswith("#"):
            current = [_normalise(t) for t in re.findall(r"`([^`]+)`", line)]
            headings.update(current)
            header_next = True
            default_col = None
            continue
        if not line.startswith("|"):
            header_next = True
            continue
        cells = _cells(line)
        if header_next:  # the header row of a new table
            lowered = [c.lower() for c in cells]
            default_col = lowered.index("default") if "default" in lowered else None
            header_next = False
            continue
        if set(cells[0]) <= {"-", " ", ":"}:
            continue
        for name in re.findall(r"`([^`]+)`", cells[0]):
            default = cells[default_col] if default_col is not None and default_col < len(cells) else None
            for path in current:
                tables.setdefault(path, {})[name] = default
    return headings, tables


def _default_text(value: Any) -> list[str]:
    if isinstance(value, bool):
        return ["true" if value else "false"]
    if isinstance(value, float) and value.is_integer():
        return [repr(value), str(int(value))]
    return [str(value)]


def _documented(text: str, headings: set[str], tables: dict[str, dict[str, str | None]], path: str) -> bool:
    parent, _, name = path.rpartition(".")
    if parent == "" and path in headings:
        return True
    if name in tables.get(parent, {}):
        return True
    dotted = [path, re.sub(r"^(\w+)\.", r"\1[].", path)]
    return any(f"`{d}`" in text for d in dotted)


def test_the_page_exists_and_has_a_table_per_section():
    headings, _ = page_tables(PAGE.read_text(encoding="utf-8"))
    assert {"daemon", "probe", "keys", "accounts"} <= headings


def test_every_schema_field_is_documented():
    text = PAGE.read_text(encoding="utf-8")
    headings, tables = page_tables(text)
    missing = [p for p in sorted(schema_fields(json_schema())) if not _documented(text, headings, tables, p)]
    assert not missing, f"docs/configuration.md does not document: {missing}"


def test_every_documented_field_exists_in_the_schema():
    """A row under a section heading names a field of that section: no field the code no longer has."""
    fields = schema_fields(json_schema())
    _, tables = page_tables(PAGE.read_text(encoding="utf-8"))
    stale = [
        f"{section}.{name}"
        for section, rows in tables.items()
        if section in fields or any(p.startswith(section + ".") for p in fields)
        for name in rows
        if f"{section}.{name}" not in fields
    ]
    assert not stale, f"docs/configuration.md documents fields the schema does not have: {stale}"


def test_documented_defaults_match_the_schema():
    """Where the schema has one scalar default for a field, its row's default column shows it."""
    fields = schema_fields(json_schema())
    _, tables = page_tables(PAGE.read_text(encoding="utf-8"))
    wrong = []
    for path, defaults in sorted(fields.items()):
        parent, _, name = path.rpartition(".")
        cell = tables.get(parent, {}).get(name)
        values = {repr(d) for d in defaults}
        if cell is None or len(values) != 1:
            continue  # not in a table with a default column, or a union whose variants differ (action `type`)
        default = defaults[0]
        if default is _MISSING or default is None or not isinstance(default, str | int | float | bool):
            continue
        plain = cell.replace("`", "").replace('"', "")
        if not any(re.search(rf"(?<![\w.]){re.escape(t)}(?![\w.])", plain) for t in _default_text(default)):
            wrong.append(f"{path}: schema default {default!r}, docs say {cell!r}")
    assert not wrong, "docs/configuration.md defaults differ from the schema:\n" + "\n".join(wrong)


def test_the_walk_sees_nested_sections_and_every_action_type():
    """The walk itself reaches lists, nested tables and union members, so the checks above mean something."""
    fields = schema_fields(json_schema())
    assert {"keys.name", "alerts.sinks.url", "pools.redis.key", "policies.when.health"} <= set(fields)
    assert {"policies.actions.command", "policies.actions.allow_destructive"} <= set(fields)
