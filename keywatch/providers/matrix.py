"""The provider x capability matrix for docs/providers.md, generated from each provider's ProviderInfo.

The registry is the truth (what each provider can do, its notes, the least privilege its management
credential needs) and the adapters carry the same declarations, so the docs cannot promise what the code
does not do. Nothing here imports an adapter, so the matrix is the same on every machine.

    python -m keywatch.providers.matrix                 # print the section
    python -m keywatch.providers.matrix --write FILE    # replace the section between the markers in FILE
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from keywatch.providers import registry
from keywatch.providers.base import Capability

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
    rotation: str = "none"
    rotation_note: str = ""


def rows() -> list[MatrixRow]:
    """One row per registered provider, in registry order, from its ProviderInfo (no adapter is imported)."""
    return [row(name) for name in registry.names()]


def row(name: str) -> MatrixRow:
    info = registry.info(name)
    return MatrixRow(name, info.title, frozenset(str(c) for c in info.capabilities), dict(info.notes),
                     info.least_privilege, info.rotation, info.rotation_note)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render(matrix: list[MatrixRow]) -> str:
    """The Markdown between the markers: the table, then each provider's notes."""
    head = ["Provider", *[c.value for c in ORDER], "rotation", "Management credential (least privilege)"]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    for r in matrix:
        marks = ["yes" if c.value in r.capabilities else "no" for c in ORDER]
        lines.append(
            "| "
            + " | ".join([f"{_cell(r.title)} (`{r.provider}`)", *marks, r.rotation,
                          _cell(r.least_privilege or "-")])
            + " |"
        )
    for r in matrix:
        noted = [c for c in ORDER if r.notes.get(c.value)]
        if not noted and not r.rotation_note:
            continue
        lines += ["", f"**{r.title}** (`{r.provider}`)"]
        lines += [f"- {c.value}: {' '.join(r.notes[c.value].split())}" for c in noted]
        if r.rotation_note:
            lines.append(f"- rotation ({r.rotation}): {' '.join(r.rotation_note.split())}")
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
