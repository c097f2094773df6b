"""docs/alerts-and-metrics.md lists every metric keywatch defines.

Metric definitions are found in the source generically: a call or a tuple whose first two items are string
literals, the first a `keywatch_` name and the second its help text (`Counter("keywatch_probes", "...")`,
`GaugeMetricFamily("keywatch_key_spend_usd", "...")`, `("keywatch_key_up", "...", ...)`). Counters are
exposed with `_total`, which the page may show instead.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "alerts-and-metrics.md"
SKIP = ("sim",)  # the provider simulator defines no metrics of keywatch's own


def _is_str(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def defined_metrics() -> set[str]:
    names = set()
    for path in (ROOT / "keywatch").rglob("*.py"):
        if any(part in SKIP for part in path.relative_to(ROOT / "keywatch").parts[:-1]):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            items = node.args if isinstance(node, ast.Call) else node.elts if isinstance(node, ast.Tuple) else []
            if len(items) >= 2 and _is_str(items[0]) and _is_str(items[1]):
                name = items[0].value
                if re.fullmatch(r"keywatch_[a-z0-9_]+", name) and " " in items[1].value:
                    names.add(name)
    return names


def test_the_scan_finds_metrics_of_every_kind():
    names = defined_metrics()
    assert {"keywatch_key_up", "keywatch_probes", "keywatch_key_spend_usd", "keywatch_sink_up"} <= names


def test_every_metric_is_documented():
    text = PAGE.read_text(encoding="utf-8")
    missing = sorted(
        n for n in defined_metrics() if f"`{n}`" not in text and f"`{n}_total`" not in text and f"`{n}{{" not in text
    )
    assert not missing, f"docs/alerts-and-metrics.md does not list: {missing}"


def test_every_documented_metric_exists():
    names = defined_metrics()
    rows = re.findall(r"^\| `(keywatch_[a-z0-9_]+)", PAGE.read_text(encoding="utf-8"), flags=re.M)
    stale = sorted(r for r in rows if r not in names and r.removesuffix("_total") not in names)
    assert not stale, f"docs/alerts-and-metrics.md lists metrics the code does not define: {stale}"
