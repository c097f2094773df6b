"""The provider x capability matrix for the README, generated from the adapter classes themselves.

The classes are the truth (what each adapter declares, its notes, the least privilege its management
credential needs), so the README cannot promise what the code does not do. An adapter module that cannot
be imported here (an optional SDK missing, a module still being written) is read from its source with
`ast`, so the matrix is the same on every machine.

    python -m keywatch.providers.matrix                 # print the section
    python -m keywatch.providers.matrix --write FILE    # replace the section between the markers in FILE
"""

from __future__ import annotations

import argparse
import ast
import functools
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keywatch.providers import registry
from keywatch.providers.base import Capability, ProviderAdapter

START = "<!-- capability-matrix:start -->"
END = "<!-- capability-matrix:end -->"
ORDER: tuple[Capability, ...] = tuple(Capability)


@dataclass(frozen=True)
class MatrixRow:
    provider: str
    title: str
    capabilities: frozenset[str]
    notes: dict[str, str] = field(default_factory=dict)
    least_privilege: str = ""


Loader = Callable[[str], type[ProviderAdapter]]


def rows(load: Loader = registry.adapter_class) -> list[MatrixRow]:
    """One row per registered provider, in registry order."""
    return [row(name, load) for name in registry.names()]


def row(name: str, load: Loader = registry.adapter_class) -> MatrixRow:
    info = registry.info(name)
    try:
        cls = load(name)
    except ImportError:
        module_name, _, cls_name = info.adapter.partition(":")
        facts = StaticReader().class_facts(module_name, cls_name)
        if facts is None:
            return MatrixRow(name, info.title, frozenset(), {"probe": "adapter module not found"})
        caps, notes, least = facts
        return MatrixRow(name, info.title, frozenset(str(c) for c in caps), dict(notes), least)
    return MatrixRow(
        name, info.title, frozenset(str(c) for c in cls.capabilities), dict(cls.notes), cls.least_privilege
    )


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render(matrix: list[MatrixRow]) -> str:
    """The Markdown between the markers: the table, then each provider's notes."""
    head = ["Provider", *[c.value for c in ORDER], "Management credential (least privilege)"]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    for r in matrix:
        marks = ["yes" if c.value in r.capabilities else "no" for c in ORDER]
        lines.append(
            "| "
            + " | ".join([f"{_cell(r.title)} (`{r.provider}`)", *marks, _cell(r.least_privilege or "-")])
            + " |"
        )
    for r in matrix:
        noted = [c for c in ORDER if r.notes.get(c.value)]
        if not noted:
            continue
        lines += ["", f"**{r.title}** (`{r.provider}`)"]
        lines += [f"- {c.value}: {' '.join(r.notes[c.value].split())}" for c in noted]
    return "\n".join(lines) + "\n"


def section(text: str) -> str | None:
    """What stands between the markers in `text`, or None when they are absent."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        return None
    return text[start + len(START) : end].strip("\n") + "\n"


def replace_section(text: str, rendered: str) -> str:
    """`text` with the section replaced; the markers and the section are appended when absent."""
    block = f"{START}\n{rendered}{END}"
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        return (text.rstrip("\n") + "\n\n" if text.strip() else "") + block + "\n"
    return text[:start] + block + text[end + len(END) :]


class StaticReader:
    """Reads `capabilities`, `notes` and `least_privilege` of an adapter class from its source, without
    importing it: enough of Python's literals, names, imports and base classes for declarations."""

    def __init__(self) -> None:
        self._trees: dict[str, ast.Module | None] = {}

    def class_facts(self, module_name: str, cls_name: str) -> tuple[Any, Any, Any] | None:
        tree = self._tree(module_name)
        if tree is None:
            return None
        values = [
            self._class_attr(module_name, cls_name, attr, 0)
            for attr in ("capabilities", "notes", "least_privilege")
        ]
        defaults = (frozenset({Capability.PROBE}), {}, "")
        return tuple(d if v is _MISSING else v for v, d in zip(values, defaults, strict=True))  # type: ignore[return-value]

    def _tree(self, module_name: str) -> ast.Module | None:
        if module_name not in self._trees:
            try:
                spec = importlib.util.find_spec(module_name)
            except (ImportError, ValueError):
                spec = None
            origin = spec.origin if spec is not None else None
            if origin is None or not origin.endswith(".py") or not Path(origin).is_file():
                self._trees[module_name] = None
            else:
                self._trees[module_name] = ast.parse(Path(origin).read_text(encoding="utf-8"))
        return self._trees[module_name]

    def _class_attr(self, module_name: str, cls_name: str, attr: str, depth: int) -> Any:
        tree = self._tree(module_name)
        if tree is None or depth > 10:
            return _MISSING
        cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls_name), None)
        if cls is None:
            origin = self._imported_from(tree, cls_name)
            return self._class_attr(origin, cls_name, attr, depth + 1) if origin else _MISSING
        for node in cls.body:
            target = value = None
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                target, value = node.target.id, node.value
            elif (
                isinstance(node, ast.Assign)
                and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
            ):
                target, value = node.targets[0].id, node.value
            if target == attr and value is not None:
                return self._eval(module_name, value, depth)
        for base in cls.bases:
            if isinstance(base, ast.Name) and base.id != "ProviderAdapter":
                found = self._class_attr(module_name, base.id, attr, depth + 1)
                if found is not _MISSING:
                    return found
        return _MISSING

    @staticmethod
    def _imported_from(tree: ast.Module, name: str) -> str | None:
        for node in tree.body:
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.level == 0
                and any((a.asname or a.name) == name for a in node.names)
            ):
                return node.module
        return None

    def _eval(self, module_name: str, node: ast.expr, depth: int) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "Capability"
        ):
            return Capability[node.attr]
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            return [self._eval(module_name, e, depth) for e in node.elts]
        if isinstance(node, ast.Dict):
            return {
                self._eval(module_name, k, depth): self._eval(module_name, v, depth)
                for k, v in zip(node.keys, node.values, strict=True)
                if k is not None
            }
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("frozenset", "set")
        ):
            return frozenset(self._eval(module_name, node.args[0], depth)) if node.args else frozenset()
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return self._eval(module_name, node.left, depth) + self._eval(module_name, node.right, depth)
        if isinstance(node, ast.Name):
            return self._name(module_name, node.id, depth + 1)
        raise ValueError(f"{module_name}: cannot read {ast.unparse(node)!r} without importing the module")

    def _name(self, module_name: str, name: str, depth: int) -> Any:
        tree = self._tree(module_name)
        if tree is None or depth > 10:
            raise ValueError(f"{module_name}: cannot resolve {name}")
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == name for t in node.targets
            ):
                return self._eval(module_name, node.value, depth)
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and node.target.id == name
                and node.value is not None
            ):
                return self._eval(module_name, node.value, depth)
        origin = self._imported_from(tree, name)
        if origin is None:
            raise ValueError(f"{module_name}: cannot resolve {name}")
        return self._name(origin, name, depth + 1)


_MISSING = object()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m keywatch.providers.matrix", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--write", metavar="FILE", help="replace the section between the markers in FILE")
    args = parser.parse_args(argv)
    rendered = render(rows())
    if not args.write:
        sys.stdout.write(f"{START}\n{rendered}{END}\n")
        return 0
    path = Path(args.write)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(replace_section(text, rendered), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


@functools.cache
def declared_capabilities(name: str) -> frozenset[Capability] | None:
    """The capabilities `name`'s adapter declares, read from its source (validating a config must not import
    boto3 or the Azure SDK); None when the source cannot be read, so nothing is refused on a guess."""
    module_name, _, cls_name = registry.info(name).adapter.partition(":")
    try:
        facts = StaticReader().class_facts(module_name, cls_name)
    except (ValueError, KeyError, SyntaxError):
        return None
    if facts is None:
        return None
    return frozenset(Capability(c) for c in facts[0])
