"""Masking of secrets in any text that leaves the process (logs, errors, alerts, CLI output).

Two nets: the secrets keywatch loaded (known precisely, whatever their format), and anything shaped like a
provider key (for secrets keywatch never loaded, e.g. echoed back in an error body).

A loaded secret is masked whole (`mask`: public prefix and last four) and in part: any run of MIN_PART or
more of its characters becomes `****`, so an error that quotes the first 20 characters of a key, or a
webhook's answer that quotes the path of its URL, shows nothing of it. The index behind that holds every
MIN_PART-gram of every loaded secret (32 bits of its hash in a flat table, `_Grams`: about 9 bytes a gram); one
pass over a text looks up the grams of each run of characters that secrets are made of (words shorter than
MIN_PART, spaces and punctuation are skipped by a regular expression), so the cost grows with the text, not
with the number of secrets.

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

from keywatch.domain import is_public_prefix, mask

# Shapes of secrets in free text: each provider's key patterns (ProviderInfo.key_patterns, set by
# providers/registry.py when keywatch is imported) and a bearer token of any kind.
GENERIC_PATTERNS: tuple[re.Pattern[str], ...] = (re.compile(r"(?i)bearer\s+[A-Za-z0-9._\-+/=]{16,}"),)
KEY_PATTERNS: tuple[re.Pattern[str], ...] = GENERIC_PATTERNS

MIN_SECRET = 6  # shorter values are not secrets worth masking (and would mask ordinary words)
MIN_PART = 8  # this many characters of a secret, anywhere in a text, are masked
PART_MASK = "****"

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


class _Grams:
    """A set of MIN_PART-grams in one flat array (open addressing, at most half full): a gram's string hash
    modulo the table's size chooses its slot, and the slot keeps the high 32 bits of the hash. 4 bytes a
    slot, about 9 a gram, instead of a string and a dict entry: a 164-character key has 157 grams. A text's
    window that matches no gram is taken for one when a slot it probes holds its 32 bits (2^-32 a probe,
    about 2.5 probes a window at most): those 8 characters are masked, once in billions of windows.

    The table is sized once, for the grams it is built with and an eighth more (secrets added later, one at
    a time: a rotation's, a secret store's, added in place); one without room for more is built again with
    them all, since moving the grams to a larger table would need the hashes' low bits, which it does not
    keep."""

    __slots__ = ("count", "size", "table")

    def __init__(self, capacity: int, base: _Grams | None = None) -> None:
        if base is not None:  # the builder checked that it fits; `add` refuses a gram past half full
            # The same table, not a copy (at 100,000 keys it is over 100 MB): the grams are added in place.
            # An index still being read sees each slot either empty or set, and the base is not used again.
            self.table, self.size, self.count = base.table, base.size, base.count
            return
        self.size = max(64, 2 * capacity + capacity // 4 + 1)
        self.table, self.count = array("I", bytes(4 * self.size)), 0

    def fits(self, more: int) -> bool:
        return self.count + more <= self.size // 2

    def add(self, text: str) -> None:
        """Every MIN_PART-gram of `text` (one loop, inlined: a fleet's secrets have millions)."""
        table, n, count = self.table, self.size, self.count
        if count + len(text) - MIN_PART + 1 > n // 2:
            raise ValueError("grams table sized too small")  # the builder counts every gram it adds
        for k in range(len(text) - MIN_PART + 1):
            h = hash(text[k : k + MIN_PART])
            f = (h >> 32) & 0xFFFFFFFF or 1  # 0 marks an empty slot
            i = h % n
            while (v := table[i]) != 0:
                if v == f:
                    break
                i = (i + 1) % n
            else:
                table[i] = f
                count += 1
        self.count = count

    def __contains__(self, gram: str) -> bool:
        h = hash(gram)
        f = (h >> 32) & 0xFFFFFFFF or 1
        table, n = self.table, self.size
        i = h % n
        while (v := table[i]) != 0:
            if v == f:
                return True
            i = (i + 1) % n
        return False


def _grams_of(text: str) -> int:
    return max(0, len(text) - MIN_PART + 1)


class _Index:
    """The loaded secrets arranged for one fast pass over a text; redact reads it without a lock while a
    reload builds the next one (which may add grams to the same tables: only ever more is masked)."""

    __slots__ = ("chars", "lengths", "parts", "runs", "secrets", "short", "tails")

    def __init__(self, secrets: frozenset[str], parts: _Grams, tails: _Grams, chars: frozenset[str]) -> None:
        self.secrets = secrets
        self.parts = parts  # every MIN_PART-gram that masks as a part of a secret
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
        added = values - old
        new_parts, new_tails = _pieces(added)
        more_parts, more_tails = sum(map(_grams_of, new_parts)), sum(map(_grams_of, new_tails))
        if base is not None and not base.secrets:
            base = None  # an empty index (every registry starts from one shared `_EMPTY`) is never added to
        if base is not None and base.parts.fits(more_parts) and base.tails.fits(more_tails):
            parts, tails, chars = _Grams(more_parts, base.parts), _Grams(more_tails, base.tails), set(base.chars)
        else:  # the first build, or a base without room: every secret's grams into tables sized for them
            new_parts, new_tails = _pieces(old | values)
            parts, tails = _Grams(sum(map(_grams_of, new_parts))), _Grams(sum(map(_grams_of, new_tails)))
            chars = set()
        for part in new_parts:
            chars.update(part)
            parts.add(part)
        for tail in new_tails:
            chars.update(tail)
            tails.add(tail)
        return cls(old | values, parts, tails, frozenset(chars))

    def redact(self, text: str) -> str:
        if self.short is not None:
            text = self.short.sub(PART_MASK, text)
        if self.runs is None or len(text) < MIN_PART:
            return text
        secrets, lengths = self.secrets, self.lengths
        # _Grams.__contains__, inlined: this loop runs once per character of the text.
        pt, pn, tt, tn = self.parts.table, self.parts.size, self.tails.table, self.tails.size
        urls = self.tails.count > 0
        hits: list[tuple[int, int, str | None]] = []  # (start, end, the whole secret there or None)
        for m in self.runs.finditer(text):
            start, end = m.span()
            for i in range(start, end - MIN_PART + 1):
                h = hash(text[i : i + MIN_PART])
                f = (h >> 32) & 0xFFFFFFFF or 1
                j = h % pn
                while v := pt[j]:
                    if v == f:
                        hits.append((i, i + MIN_PART, None))
                        break
                    j = (j + 1) % pn
                if urls:
                    j = h % tn
                    while v := tt[j]:
                        if v == f:
                            last = i + MIN_PART
                            for n in lengths:
                                if n <= last and (whole := text[last - n : last]) in secrets:
                                    hits.append((last - n, last, whole))
                            break
                        j = (j + 1) % tn
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
    """What the index holds of `secrets`: the texts whose grams mask as parts (a secret, or a URL's secret
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
    return parts, tails


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
