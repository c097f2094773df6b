"""Find keys in files and git history: every managed secret by exact match, and provider key shapes.

Managed secrets go into one Aho-Corasick automaton (pyahocorasick), so one pass over a text finds all of
them, whatever their format, and the cost does not grow with the number of keys. The provider rules
(`patterns.RULES`) are the second net, for keys keywatch does not manage.

Files are read in chunks (CHUNK bytes) that overlap by enough characters for the longest secret and a
rule's context, so memory stays bounded on a minified bundle of one 50 MB line. A file whose first chunk
holds a NUL byte is binary and skipped; a file over `max_size` is skipped; both are noted. Git history is
read object by object: `git log --all --raw` names every blob each commit added or changed (so a file
deleted later is still seen, at the commit that added it), each distinct blob once, and `git cat-file
--batch` streams its content.

A finding carries the secret's masked form (`domain.mask`) and fingerprint, never the secret.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import ahocorasick

from keywatch.domain import fingerprint, mask
from keywatch.leaks.patterns import MANAGED_RULE_ID, MAX_MATCH, NEAR, RULES, Rule

CHUNK = 1 << 20  # bytes read at a time
DEFAULT_MAX_SIZE = 50 << 20  # files and blobs larger than this are skipped with a note
MIN_SECRET = 8  # shorter managed values would match ordinary words; they are left out, with a note
SKIP_DIRS = frozenset({".git", ".hg", ".svn"})


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    column: int
    rule: str  # MANAGED_RULE_ID or a patterns.Rule id
    provider: str | None
    masked: str
    fingerprint: str
    key: str | None = None  # the managed key's name
    commit: str | None = None  # where in git history (None: the file on disk)

    @property
    def managed(self) -> bool:
        return self.rule == MANAGED_RULE_ID

    def as_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "line": self.line,
            "column": self.column,
            "commit": self.commit,
            "rule": self.rule,
            "provider": self.provider,
            "key": self.key,
            "managed": self.managed,
            "masked": self.masked,
            "fingerprint": self.fingerprint,
        }


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str
    commit: str | None = None


@dataclass
class ScanReport:
    findings: list[Finding] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    files: int = 0
    blobs: int = 0
    bytes: int = 0
    notes: list[str] = field(default_factory=list)

    def merge(self, other: ScanReport) -> None:
        self.findings += other.findings
        self.skipped += other.skipped
        self.files += other.files
        self.blobs += other.blobs
        self.bytes += other.bytes
        self.notes += other.notes


@dataclass(frozen=True)
class Managed:
    """One managed secret: which key (or account) it belongs to and the provider."""

    name: str
    provider: str | None


class SecretMatcher:
    """The managed secrets as one automaton; `find(text)` yields (start, end, secret, owner)."""

    def __init__(self, secrets: Mapping[str, Managed]) -> None:
        self.skipped = sorted({m.name for s, m in secrets.items() if len(s) < MIN_SECRET})
        kept = {s: m for s, m in secrets.items() if len(s) >= MIN_SECRET}
        self.count = len(kept)
        self.longest = max((len(s) for s in kept), default=0)
        self._automaton: ahocorasick.Automaton | None = None
        if kept:
            a = ahocorasick.Automaton()
            for s, m in kept.items():
                a.add_word(s, (s, m))
            a.make_automaton()
            self._automaton = a

    def find(self, text: str) -> Iterator[tuple[int, int, str, Managed]]:
        if self._automaton is None:
            return
        for last, (secret, owner) in self._automaton.iter(text):
            yield last - len(secret) + 1, last + 1, secret, owner


def managed_secrets(inventory: object) -> dict[str, Managed]:
    """Every secret the inventory loaded (keys, their extra secrets, accounts' credentials) and its owner."""
    from keywatch.domain import Secret

    out: dict[str, Managed] = {}
    for k in getattr(inventory, "keys", []):
        if k.secret is not None:
            out.setdefault(k.secret.reveal(), Managed(k.name, k.provider))
        for s in k.extra_secrets.values():
            out.setdefault(s.reveal(), Managed(k.name, k.provider))
    for a in getattr(inventory, "accounts", {}).values():
        if a.admin_secret is not None:
            out.setdefault(a.admin_secret.reveal(), Managed(f"account:{a.name}", a.provider))
        for v in a.options.values():
            if isinstance(v, Secret):
                out.setdefault(v.reveal(), Managed(f"account:{a.name}", a.provider))
    return out


class _Lines:
    """Line and column of increasing absolute offsets, counted once over the text as it streams by."""

    def __init__(self) -> None:
        self.line = 1
        self.line_start = 0
        self.counted = 0

    def advance(self, buf: str, base: int, to: int) -> None:
        lo, hi = self.counted - base, to - base
        if hi > lo:
            n = buf.count("\n", lo, hi)
            if n:
                self.line += n
                self.line_start = base + buf.rfind("\n", lo, hi) + 1
            self.counted = to

    def at(self, buf: str, base: int, pos: int) -> tuple[int, int]:
        self.advance(buf, base, pos)
        return self.line, pos - self.line_start + 1


class Scanner:
    def __init__(
        self, matcher: SecretMatcher | None = None, *, max_size: int = DEFAULT_MAX_SIZE, rules: Iterable[Rule] = RULES
    ) -> None:
        self.matcher = matcher or SecretMatcher({})
        self.max_size = max_size
        self.rules = tuple(rules)
        self._near = [r for r in self.rules if r.near is not None]
        self._plain = [r for r in self.rules if r.near is None]
        self.context = MAX_MATCH + 2 * NEAR  # characters kept before the part of a chunk being reported
        self.carry = max(self.matcher.longest, MAX_MATCH + NEAR) + 1

    # -- one text stream ---------------------------------------------------------------------------------
    def scan_stream(self, read: Callable[[int], bytes], path: str, commit: str | None = None) -> list[Finding] | None:
        """Findings in the stream `read` yields, or None when it is binary (a NUL in its first 8 KiB)."""
        data = read(CHUNK)
        if b"\x00" in data[:8192]:
            return None
        out: list[Finding] = []
        lines = _Lines()
        buf, base, report_from, last_end = "", 0, 0, 0
        while True:
            eof = not data
            buf += data.decode("latin-1")
            limit = len(buf) if eof else len(buf) - self.carry
            if limit > report_from:
                for start, end, secret, rule, owner in self._matches(buf, report_from, limit):
                    if base + start < last_end:
                        continue  # inside a finding already reported (the strict and loose OpenAI rules)
                    last_end = base + end
                    line, col = lines.at(buf, base, base + start)
                    out.append(self._finding(path, line, col, commit, secret, rule, owner))
                lines.advance(buf, base, base + limit)
                keep = max(0, limit - self.context)
                base += keep
                buf = buf[keep:]
                report_from = limit - keep
            if eof:
                return out
            data = read(CHUNK)

    def _matches(self, buf: str, lo: int, hi: int) -> list[tuple[int, int, str, Rule | None, object]]:
        found: list[tuple[int, int, str, Rule | None, object]] = []
        for start, end, secret, owner in self.matcher.find(buf):
            if lo <= start < hi:
                found.append((start, end, secret, None, owner))
        for r in self._plain:
            for m in _candidates(r, buf, lo, hi):
                start = m.start("key")
                if lo <= start < hi and r.accepts(m.group("key"), buf, start, m.end("key")):
                    found.append((start, m.end("key"), m.group("key"), r, None))
        for r in self._near:
            assert r.near is not None
            seen: set[int] = set()
            done = 0  # where the last window ended: windows of words close together are not searched twice
            for w in r.near.finditer(buf, max(0, lo - MAX_MATCH - NEAR), min(len(buf), hi + NEAR + MAX_MATCH)):
                window_end = min(len(buf), w.end() + NEAR + MAX_MATCH)
                window_start = max(0, w.start() - NEAR - MAX_MATCH, done - MAX_MATCH)
                done = window_end
                for m in r.regex.finditer(buf, window_start, window_end):
                    start = m.start("key")
                    if start in seen or not lo <= start < hi:
                        continue
                    if r.accepts(m.group("key"), buf, start, m.end("key")):
                        seen.add(start)
                        found.append((start, m.end("key"), m.group("key"), r, None))
        found.sort(key=lambda f: (f[0], f[3] is not None, f[0] - f[1]))
        return found

    @staticmethod
    def _finding(
        path: str, line: int, col: int, commit: str | None, secret: str, rule: Rule | None, owner: object
    ) -> Finding:
        if rule is None:
            assert isinstance(owner, Managed)
            return Finding(
                path,
                line,
                col,
                MANAGED_RULE_ID,
                owner.provider,
                mask(secret),
                fingerprint(secret),
                key=owner.name,
                commit=commit,
            )
        return Finding(path, line, col, rule.id, rule.provider, mask(secret), fingerprint(secret), commit=commit)

    # -- files -------------------------------------------------------------------------------------------
    def scan_file(self, path: Path, shown: str | None = None) -> ScanReport:
        report = ScanReport()
        name = shown or str(path)
        try:
            size = path.stat().st_size
            if size > self.max_size:
                report.skipped.append(Skipped(name, f"larger than {self.max_size} bytes ({size})"))
                return report
            with path.open("rb") as fh:
                found = self.scan_stream(fh.read, name)
        except OSError as exc:
            report.skipped.append(Skipped(name, f"cannot be read: {exc.strerror or type(exc).__name__}"))
            return report
        if found is None:
            report.skipped.append(Skipped(name, "binary"))
            return report
        report.files += 1
        report.bytes += size
        report.findings += found
        return report

    def scan_paths(self, paths: Iterable[Path]) -> ScanReport:
        report = ScanReport()
        for root in paths:
            for f in walk(root):
                report.merge(self.scan_file(f))
        return report

    # -- git history -------------------------------------------------------------------------------------
    def scan_git(self, repo: Path) -> ScanReport:
        """Every blob any commit of any ref added or changed, once, at the first (oldest) commit that has it."""
        report = ScanReport()
        top = toplevel(repo)
        if top is None:
            report.notes.append(f"{repo}: not in a git repository; history not scanned")
            return report
        shown = Path(os.path.relpath(top, Path.cwd())) if not repo.is_absolute() else Path(top)
        log = subprocess.Popen(
            [
                "git",
                "-C",
                top,
                "log",
                "--all",
                "--reverse",
                "--raw",
                "--no-renames",
                "--no-abbrev",
                "--diff-merges=first-parent",
                "-z",
                "--format=%x01%H",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        cat = subprocess.Popen(
            ["git", "-C", top, "cat-file", "--batch"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert log.stdout is not None and cat.stdin is not None and cat.stdout is not None
        seen: set[str] = set()
        try:
            for commit, mode, blob, path in _raw_entries(log.stdout):
                if blob in seen or mode == "160000" or set(blob) == {"0"}:
                    continue
                seen.add(blob)
                shown_path = str(shown / path)
                cat.stdin.write(blob.encode() + b"\n")
                cat.stdin.flush()
                header = cat.stdout.readline().split()
                if len(header) != 3 or header[1] != b"blob":
                    continue
                size = int(header[2])
                reader = _Limited(cat.stdout, size)
                if size > self.max_size:
                    reader.drain()
                    report.skipped.append(Skipped(shown_path, f"larger than {self.max_size} bytes ({size})", commit))
                else:
                    found = self.scan_stream(reader.read, shown_path, commit)
                    reader.drain()
                    if found is None:
                        report.skipped.append(Skipped(shown_path, "binary", commit))
                    else:
                        report.blobs += 1
                        report.bytes += size
                        report.findings += found
                cat.stdout.read(1)  # the newline after each object
        finally:
            cat.stdin.close()
            for p in (cat, log):
                p.kill()
                p.wait()
        return report


def _candidates(r: Rule, buf: str, lo: int, hi: int) -> Iterator[re.Match[str]]:
    """The rule's matches starting in [lo, hi): at its anchors when it has some, else a regex pass."""
    if not r.anchors:
        for m in r.regex.finditer(buf, max(0, lo - MAX_MATCH)):
            if m.start("key") >= hi:
                return
            yield m
        return
    starts: set[int] = set()
    for anchor in r.anchors:
        pos = buf.find(anchor, max(0, lo + r.offset))
        while pos != -1 and pos - r.offset < hi:
            start = pos - r.offset
            if start >= 0 and start not in starts:
                m = r.regex.match(buf, start)
                if m is not None:
                    starts.add(start)
                    yield m
            pos = buf.find(anchor, pos + 1)


def walk(root: Path) -> Iterator[Path]:
    """Regular files under `root` (or `root` itself), in a stable order, without VCS metadata."""
    if root.is_file():
        yield root
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            p = Path(dirpath, name)
            if p.is_file() and not p.is_symlink():
                yield p


class _Limited:
    """At most `size` bytes of a pipe (one object of `git cat-file --batch`)."""

    def __init__(self, stream: object, size: int) -> None:
        self.stream = stream
        self.left = size

    def read(self, n: int) -> bytes:
        if self.left <= 0:
            return b""
        data = self.stream.read(min(n, self.left))  # type: ignore[attr-defined]
        self.left -= len(data)
        if not data:
            self.left = 0
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


def _raw_entries(stream: object) -> Iterator[tuple[str, str, str, str]]:
    """(commit, new mode, new blob, path) from `git log --raw -z --format=%x01%H`."""
    commit = ""
    pending: bytes = b""
    meta: str | None = None
    while True:
        data = stream.read(1 << 16)  # type: ignore[attr-defined]
        if not data:
            break
        pending += data
        *tokens, pending = pending.split(b"\0")
        for raw in tokens:
            token = raw.lstrip(b"\n")
            if meta is not None:
                fields = meta.split()
                if len(fields) >= 5 and fields[-1] != "D":
                    yield commit, fields[1], fields[3], token.decode("utf-8", "replace")
                meta = None
            elif token.startswith(b"\x01"):
                commit = token[1:].decode()
            elif token.startswith(b":"):
                meta = token[1:].decode()


def toplevel(path: Path) -> str | None:
    """The work tree root of the git repository `path` is in, or None."""
    cwd = path if path.is_dir() else path.parent
    try:
        done = subprocess.run(
            ["git", "-C", str(cwd), "rev-parse", "--show-toplevel"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None
