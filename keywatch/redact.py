"""Masking of secrets in any text that leaves the process (logs, errors, alerts, CLI output).

Two nets: the secrets keywatch loaded (known precisely, whatever their format), and anything shaped like a
provider key (for secrets keywatch never loaded, e.g. echoed back in an error body).

A loaded secret is masked whole (`mask`: public prefix and last four) and in part: any run of MIN_PART or
more of its characters (one or more of them past its public prefix, which masked forms show) becomes
`****`, so an error that quotes the first 20 characters of a key, or a webhook's answer that quotes the path
of its URL, shows nothing of it. The index behind that (`_Anchors`) keeps a piece of ANCHOR characters of
each secret every STRIDE characters, about 2.2 bytes per character of a secret; one pass over a text looks
up each of its ANCHOR-character windows in the runs of characters that secrets are made of (words shorter
than MIN_PART, spaces and punctuation are skipped by a regular expression) and checks a window found there
against the secret itself, so the cost grows with the text, not with the number of secrets, and nothing
that is not a secret's is masked.

A URL (a sink's, say) is masked whole, and in part by its token-like pieces only (`url_secrets`: user info,
path segments and query values that look like tokens): `https://`, a host name or `/api` are not secret.
"""

from __future__ import annotations

import functools
import re
import threading
from array import array
from collections.abc import Iterable
from urllib.parse import parse_qsl, unquote, urlsplit

from keywatch.domain import is_public_prefix, mask, public_prefix_length

# Shapes of secrets in free text: each provider's key patterns (ProviderInfo.key_patterns, set by
# providers/registry.py when keywatch is imported) and a bearer token of any kind.
GENERIC_PATTERNS: tuple[re.Pattern[str], ...] = (re.compile(r"(?i)bearer\s+[A-Za-z0-9._\-+/=]{16,}"),)
KEY_PATTERNS: tuple[re.Pattern[str], ...] = GENERIC_PATTERNS

MIN_SECRET = 6  # shorter values are not secrets worth masking (and would mask ordinary words)
MIN_PART = 8  # this many characters of a secret, anywhere in a text, are masked
PART_MASK = "****"
STRIDE = 4  # the index keeps a piece of each secret every STRIDE characters (its anchors, `_Anchors`)
ANCHOR = MIN_PART - STRIDE + 1  # of this many characters: any MIN_PART in a row hold one whole

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_WORD = re.compile(r"[a-z]+(?:[\-_.][a-z]+)*")


def use_key_patterns(patterns: Iterable[str]) -> None:
    global KEY_PATTERNS
    KEY_PATTERNS = tuple(re.compile(p) for p in patterns) + GENERIC_PATTERNS


def looks_like_token(value: str) -> bool:
    """A URL piece worth masking: MIN_PART characters or more and not a plain lower-case word
    (`services`, `alertmanager`, `incoming-webhooks`), unless it is long enough to be random anyway."""
    return len(value) >= MIN_PART and (len(value) >= 20 or not _WORD.fullmatch(value))


def is_url(value: str) -> bool:
    return bool(_URL.match(value))


def url_secrets(url: str) -> list[str]:
    """The secret pieces of a URL: the password, and the user name, path segments, query values and fragment
    that look like tokens (`looks_like_token`), as written and percent-decoded."""
    try:
        parts = urlsplit(url)
        password, username = parts.password, parts.username
    except ValueError:
        return []
    out: list[str] = []
    if password:
        out.append(password)
    if username and looks_like_token(username):
        out.append(username)
    pieces = [s for s in parts.path.split("/") if s]
    pieces += [v for _, v in parse_qsl(parts.query, keep_blank_values=True)]
    pieces += [v for v in re.split(r"[/?&=]", parts.fragment) if v]
    out += [p for p in pieces if looks_like_token(p)]
    out += [unquote(p) for p in out if "%" in p]
    return list(dict.fromkeys(out))


class _Anchors:
    """The loaded texts (secrets, a URL's secret pieces) and their anchors, in one flat array.

    A text's anchors are its ANCHOR-character pieces that start every STRIDE characters, from four
    characters before the end of its public prefix (`sk-proj-` ends at 8: the pieces at 4, 8, 12, ...). Any
    MIN_PART characters of it in a row that hold one or more past that prefix hold one anchor whole. A text
    is searched by looking up each of its ANCHOR-character windows; a window that is some text's anchor is
    then checked against that text itself (`_agree`, both ways from the window): what is masked is exactly
    where the two agree, when that is MIN_PART characters or more. A 164-character key has 40 anchors,
    about 9 bytes each (0.36 KB, where every 8-character window of it, each kept as 32 bits of its hash, took
    1.4 KB), and nothing is masked that is not a secret's.

    A slot (open addressing, at most half full; a piece's string hash modulo the table's size chooses it)
    holds the text's number (its place in `texts`, from 1; 0 is an empty slot), a bit that says the anchor is
    shared, and a fingerprint of the piece (the hash's high bits, as many as the number leaves free: 11 or
    more), so that a window is checked against a text only when both match (one window in thousands, and
    each check is exact). An anchor that several texts share (`-` and the first character after `sk-proj`, a
    prefix no provider is known by) keeps one slot, for the first of them; each other one adds instead the
    MIN_PART-character pieces of it around the anchor (up to four), one slot each, unless a text already
    there holds the same piece. A window found in a shared anchor's slot is then looked up again with the
    MIN_PART characters around it, so a fleet of keys that begin alike costs neither a check per key nor a
    table that fills up with one anchor.

    The table is sized for the anchors it is built with and an eighth more (secrets added later, one at a
    time: a rotation's, a secret store's, added in place); one without room for more is built again with
    them all, since moving the anchors to a larger table would need the hashes' low bits, which it does not
    keep."""

    __slots__ = ("count", "fbits", "fmask", "room", "shared", "size", "table", "texts")

    def __init__(self, anchors: int, texts: int, base: _Anchors | None = None) -> None:
        if base is not None:  # the builder checked that it fits; `add` refuses a slot past half full
            # The same table, not a copy (at 100,000 keys it is 36 MB): the anchors are added in place. An
            # index still being read sees each slot either empty or set (only ever more is masked), and the
            # base is not used again.
            self.table, self.size, self.count, self.texts = base.table, base.size, base.count, base.texts
            self.room, self.fbits, self.fmask, self.shared = base.room, base.fbits, base.fmask, base.shared
            return
        anchors += anchors // 8  # and the pieces around the shared ones (the builder starts over if short)
        self.size = max(64, 2 * anchors + anchors // 4 + 1)
        self.room = texts + texts // 8 + 16
        width = 32 if self.room.bit_length() <= 20 else 64  # over a million texts: 8-byte slots
        self.fbits = width - self.room.bit_length()
        self.shared = 1 << (self.fbits - 1)
        self.fmask = self.shared - 1
        self.table = array("I" if width == 32 else "Q", [0]) * self.size
        self.texts: list[str] = []
        self.count = 0

    def fits(self, anchors: int, texts: int) -> bool:
        """Room for `texts` with `anchors` in all, each of them shared at worst."""
        return self.count + (1 + STRIDE) * anchors <= self.size // 2 and len(self.texts) + texts <= self.room

    def add(self, text: str) -> bool:
        """`text` and its anchors (one loop, inlined: a fleet's secrets have millions). False, with the text
        not added in full, when the table has no room left for it (only a builder's estimate can fall short:
        `fits` counts the worst)."""
        table, n, count, texts = self.table, self.size, self.count, self.texts
        fbits, fmask, shared = self.fbits, self.fmask, self.shared
        if len(texts) >= self.room:
            return False
        texts.append(text)  # before its anchors: a reader that finds one finds its text
        number = len(texts)
        tag = number << fbits
        for k in range(_first_anchor(text), len(text) - ANCHOR + 1, STRIDE):
            if count >= n // 2:
                self.count = count
                return False
            anchor = text[k : k + ANCHOR]
            h = hash(anchor)
            f = (h >> 32) & fmask
            i = h % n
            while (v := table[i]) != 0:
                if v & fmask == f:
                    other = v >> fbits
                    if other == number:  # this text's own (a repeated piece): its lookups reach this slot
                        break
                    if anchor in texts[other - 1]:  # another text's: this one is found by the pieces around
                        table[i] = v | shared
                        self.count = count
                        for left in range(min(k, STRIDE - 1), -1, -1):
                            if k - left + MIN_PART <= len(text) and not self._piece(text, k - left, tag):
                                return False
                        count = self.count
                        break
                i = (i + 1) % n
            else:
                table[i] = tag | f
                count += 1
        self.count = count
        return True

    def _piece(self, text: str, at: int, tag: int) -> bool:
        """The MIN_PART characters of `text` at `at`, around a shared anchor (False: no room)."""
        table, n, texts, fbits, fmask = self.table, self.size, self.texts, self.fbits, self.fmask
        piece = text[at : at + MIN_PART]
        h = hash(piece)
        f = (h >> 32) & fmask
        i = h % n
        while (v := table[i]) != 0:
            if v & fmask == f and piece in texts[(v >> fbits) - 1]:
                return True  # a text that holds it is found by it already
            i = (i + 1) % n
        if self.count >= n // 2:
            return False
        table[i] = tag | f
        self.count += 1
        return True

    def holding(self, piece: str) -> list[int]:
        """The numbers of the texts whose slots `piece` matches (each may hold it: they are to be checked)."""
        table, n, fbits, fmask = self.table, self.size, self.fbits, self.fmask
        h = hash(piece)
        f = (h >> 32) & fmask
        i = h % n
        out = []
        while v := table[i]:
            if v & fmask == f:
                out.append(v >> fbits)
            i = (i + 1) % n
        return out


def _first_anchor(text: str) -> int:
    return max(0, public_prefix_length(text) - STRIDE)


def _anchors_of(text: str) -> int:
    return len(range(_first_anchor(text), len(text) - ANCHOR + 1, STRIDE))


def _agree(a: str, i: int, b: str, j: int, limit: int) -> int:
    """How many characters `a[i:]` and `b[j:]` have in common from their start, `limit` at most (a binary
    search over slices: a few comparisons in C instead of a loop over characters)."""
    if limit <= 0 or a[i] != b[j]:
        return 0
    lo, hi = 1, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[i : i + mid] == b[j : j + mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _agree_back(a: str, i: int, b: str, j: int, limit: int) -> int:
    """How many characters `a[:i]` and `b[:j]` have in common at their end, `limit` at most."""
    if limit <= 0 or a[i - 1] != b[j - 1]:
        return 0
    lo, hi = 1, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[i - mid : i] == b[j - mid : j]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _check(text: str, i: int, piece: str, texts: list[str], number: int, start: int, end: int,
           reach: dict[tuple[int, int], int], hits: list[tuple[int, int, str | None]]) -> None:
    """Where `text` (its run `start`-`end`) agrees with text `number` around `piece` (at `i`): a hit when
    that is MIN_PART characters or more. `reach` keeps, for each text and offset between the two, where the
    last agreement checked ended, so that the next anchors within it are not checked again."""
    s, size = texts[number - 1], len(piece)
    k = s.find(piece)
    while k >= 0:
        if reach.get((number, i - k), -1) < i + size:
            left = _agree_back(text, i, s, k, min(i - start, k))
            right = size + _agree(text, i + size, s, k + size, min(end - i, len(s) - k) - size)
            reach[number, i - k] = i + right
            if left + right >= MIN_PART:
                hits.append((i - left, i + right, None))
        k = s.find(piece, k + 1)


def _table_of(texts: list[str]) -> _Anchors:
    """A table with every anchor of `texts`, sized for them (twice as large again where the pieces around the
    shared anchors outgrow the eighth more a table is given)."""
    anchors = sum(map(_anchors_of, texts))
    while True:
        table = _Anchors(anchors, len(texts))
        if all(table.add(text) for text in texts):
            return table
        anchors *= 2


class _Index:
    """The loaded secrets arranged for one fast pass over a text; redact reads it without a lock while a
    reload builds the next one (which may add anchors to the same table: only ever more is masked)."""

    __slots__ = ("chars", "lengths", "parts", "runs", "secrets", "short", "tails")

    def __init__(self, secrets: frozenset[str], parts: _Anchors, tails: frozenset[str],
                 chars: frozenset[str]) -> None:
        self.secrets = secrets
        self.parts = parts  # every text whose runs of MIN_PART characters or more mask as a part of a secret
        # The last MIN_PART characters of each URL secret: where a whole one may end. Any other secret shown
        # whole is covered by its parts, and the span they mask is then the secret itself.
        self.tails = tails
        self.chars = chars
        self.lengths = tuple(sorted({len(s) for s in secrets if len(s) >= MIN_PART and is_url(s)}, reverse=True))
        self.runs = re.compile(f"[{''.join(map(re.escape, sorted(chars)))}]{{{MIN_PART},}}") if chars else None
        shorts = sorted((s for s in secrets if len(s) < MIN_PART), key=len, reverse=True)
        self.short = re.compile("|".join(map(re.escape, shorts))) if shorts else None

    @classmethod
    def build(cls, secrets: Iterable[str], base: _Index | None = None) -> _Index:
        values = frozenset(s for s in secrets if s and len(s) >= MIN_SECRET)
        old = base.secrets if base is not None else frozenset()
        new_parts, new_tails = _pieces(values - old)
        if base is not None and not base.secrets:
            base = None  # an empty index (every registry starts from one shared `_EMPTY`) is never added to
        parts = None
        if base is not None and base.parts.fits(sum(map(_anchors_of, new_parts)), len(new_parts)):
            parts, tails, chars = _Anchors(0, 0, base.parts), base.tails | set(new_tails), set(base.chars)
            if not all(parts.add(part) for part in new_parts):  # `fits` counts the worst: not expected
                parts = None
        if parts is None:  # the first build, or a base without room: every secret's anchors in a new table
            new_parts, new_tails = _pieces(old | values)
            parts, tails, chars = _table_of(new_parts), frozenset(new_tails), set()
        for part in new_parts:
            chars.update(part)
        for tail in new_tails:
            chars.update(tail)
        return cls(old | values, parts, frozenset(tails), frozenset(chars))

    def redact(self, text: str) -> str:
        if self.short is not None:
            text = self.short.sub(PART_MASK, text)
        if self.runs is None or len(text) < MIN_PART:
            return text
        secrets, lengths, tails = self.secrets, self.lengths, self.tails
        # The lookup of _Anchors, inlined: this loop runs once per character of the text.
        parts = self.parts
        table, n, fbits, fmask, shared = parts.table, parts.size, parts.fbits, parts.fmask, parts.shared
        texts = parts.texts
        hits: list[tuple[int, int, str | None]] = []  # (start, end, the whole secret there or None)
        reach: dict[tuple[int, int], int] = {}  # (text, offset): where their last agreement checked ended
        for m in self.runs.finditer(text):
            start, end = m.span()
            for i in range(start, end - ANCHOR + 1):
                anchor = text[i : i + ANCHOR]
                h = hash(anchor)
                f = (h >> 32) & fmask
                j = h % n
                while v := table[j]:
                    if v & fmask == f:
                        _check(text, i, anchor, texts, v >> fbits, start, end, reach, hits)
                        if v & shared:  # an anchor of several texts: the pieces around it say which
                            for at in range(max(start, i - STRIDE + 1), min(i, end - MIN_PART) + 1):
                                piece = text[at : at + MIN_PART]
                                for number in parts.holding(piece):
                                    _check(text, at, piece, texts, number, start, end, reach, hits)
                    j = (j + 1) % n
            if tails:
                for i in range(start, end - MIN_PART + 1):
                    if text[i : i + MIN_PART] in tails:
                        last = i + MIN_PART
                        for size in lengths:
                            if size <= last and (whole := text[last - size : last]) in secrets:
                                hits.append((last - size, last, whole))
        if not hits:
            return text
        hits.sort(key=lambda h: (h[0], -h[1]))
        out: list[str] = []
        done = j = 0
        while j < len(hits):
            start, end, _ = hits[j]
            group = j
            while j < len(hits) and hits[j][0] <= end:  # overlapping or touching hits are one masked span
                end = max(end, hits[j][1])
                j += 1
            span = text[start:end]
            out.append(text[done:start])
            if span in secrets or any(w == span for _, _, w in hits[group:j]):
                out.append(mask(span))
            elif is_public_prefix(span):  # `sk-proj-`, as every masked form shows it
                out.append(span)
            else:
                out.append(PART_MASK)
            done = end
        out.append(text[done:])
        return "".join(out)


def _pieces(secrets: Iterable[str]) -> tuple[list[str], list[str]]:
    """What the index holds of `secrets`: the texts whose runs mask as parts (a secret, or a URL's secret
    pieces), and the last MIN_PART characters of each URL secret (where a whole one may end: any other
    secret shown whole is covered by its parts, and the span they mask is then the secret itself)."""
    parts: list[str] = []
    tails: list[str] = []
    for s in secrets:
        if len(s) < MIN_PART:
            continue
        if is_url(s):  # masked by its pieces only: where the whole URL ends must be known on its own
            parts += [p for p in url_secrets(s) if len(p) >= MIN_PART]
            tails.append(s[-MIN_PART:])
        else:
            parts.append(s)
    return list(dict.fromkeys(parts)), tails


_EMPTY = _Index.build(())


class SecretRegistry:
    """The set of secrets currently loaded; the log processor masks each of them, whole or in part."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._index = _EMPTY

    def replace(self, secrets: Iterable[str]) -> None:
        index = _Index.build(secrets)
        with self._lock:
            self._index = index

    def add(self, secrets: Iterable[str]) -> None:
        with self._lock:
            new = {s for s in secrets if s and len(s) >= MIN_SECRET} - self._index.secrets
            if new:
                self._index = _Index.build(new, self._index)

    def __contains__(self, secret: str) -> bool:
        return secret in self._index.secrets

    def redact(self, text: str) -> str:
        return redact_shapes(self._index.redact(text))


REGISTRY = SecretRegistry()


def redact_shapes(text: str) -> str:
    for pattern in KEY_PATTERNS:
        text = pattern.sub(_mask_match, text)
    return text


def _mask_match(m: re.Match[str]) -> str:
    value = m.group(0)
    if value.lower().startswith("bearer"):
        return "Bearer ****"
    if "..." in value:
        return value
    return mask(value)


@functools.lru_cache(maxsize=256)
def _index_of(secrets: frozenset[str]) -> _Index:
    return _Index.build(secrets)


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with `secrets` (besides every loaded one) masked, whole or in part."""
    extra = frozenset(s for s in secrets if s and len(s) >= MIN_SECRET and s not in REGISTRY)
    if extra:
        text = _index_of(extra).redact(text)
    return REGISTRY.redact(text)
