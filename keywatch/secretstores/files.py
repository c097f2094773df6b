"""File destinations: a plain file holding only the secret (`file:/path`) and a systemd EnvironmentFile
(`envfile:/path#VAR`).

Stages live beside the file: `<path>.pending` and `<path>.previous` hold whole files in the same format, and
`<path>.stages` (JSON, never a value) records which rotation token each stage belongs to, so every method can
be repeated after a crash. Every write is a temporary file in the same directory, fsynced, then renamed over
the target (mode 0600 from creation): a reader sees the old file or the new one, never a part of one, and the
current file never disappears.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets as _random
from collections.abc import Mapping
from pathlib import Path

from keywatch.domain import Secret
from keywatch.secretstores.base import Stage, StoreUnavailable, check_token

MODE = 0o600


def atomic_write(path: Path, text: str, *, ref: str) -> None:
    """Write `text` to `path` by temp file + fsync + rename; the file is 0600 from its creation."""
    tmp = path.with_name(f".{path.name}.{_random.token_hex(6)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, MODE)
        try:
            os.write(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StoreUnavailable(ref, f"cannot write {path.name}: {exc.strerror}", permanent=_permanent(exc)) from None


def _permanent(exc: OSError) -> bool:
    import errno

    return exc.errno in (errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR, errno.EROFS, errno.EISDIR)


def _read_text(path: Path, *, ref: str) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreUnavailable(ref, f"cannot read {path.name}: {exc.strerror}", permanent=_permanent(exc)) from None


class _StagedFile:
    """The staging protocol shared by both file formats; subclasses say how a value sits in the text."""

    scheme = ""

    def __init__(self, ref: str, path: Path) -> None:
        self.ref = ref
        self.path = path
        self.pending_path = path.with_name(path.name + ".pending")
        self.previous_path = path.with_name(path.name + ".previous")
        self.meta_path = path.with_name(path.name + ".stages")

    # format: overridden by EnvFileDestination
    def _extract(self, text: str) -> str | None:
        value = text.strip()
        return value or None

    def _render(self, base: str | None, secret: Secret, fields: Mapping[str, str]) -> str:
        return secret.reveal()

    def _names(self, fields: Mapping[str, str]) -> list[str]:
        """What a rotation sets in the file (recorded, so promote touches nothing else)."""
        return []

    def _merge(self, current: str | None, pending: str, names: list[str]) -> str:
        """The new current file: a plain file is replaced whole."""
        return pending

    # stage bookkeeping
    def _meta(self) -> dict[str, str | None]:
        text = _read_text(self.meta_path, ref=self.ref)
        if text is None:
            return {}
        try:
            data = json.loads(text)
        except ValueError:
            raise StoreUnavailable(self.ref, f"{self.meta_path.name} is not valid JSON", permanent=True) from None
        return {k: v for k, v in data.items() if isinstance(k, str) and (v is None or isinstance(v, str))}

    def _save_meta(self, meta: dict[str, str | None]) -> None:
        atomic_write(self.meta_path, json.dumps(meta, sort_keys=True) + "\n", ref=self.ref)

    def _stage_path(self, stage: Stage) -> Path:
        return {"current": self.path, "pending": self.pending_path, "previous": self.previous_path}[stage]

    async def read(self, stage: Stage = "current") -> Secret | None:
        text = _read_text(self._stage_path(stage), ref=self.ref)
        if text is None:
            return None
        value = self._extract(text)
        return Secret(value) if value else None

    async def write_pending(self, secret: Secret, *, token: str, fields: Mapping[str, str] = {}) -> None:
        check_token(self.ref, token)
        meta = self._meta()
        if meta.get("current") == token:
            return  # already promoted
        if meta.get("pending") == token and self.pending_path.exists():
            held = await self.read("pending")
            if held != secret:
                raise StoreUnavailable(
                    self.ref, "this rotation token already holds a different pending value", permanent=True
                )
            return
        base = _read_text(self.path, ref=self.ref)
        atomic_write(self.pending_path, self._render(base, secret, fields), ref=self.ref)
        meta["pending"] = token
        meta["pending_names"] = ",".join(self._names(fields)) or None
        self._save_meta(meta)

    async def promote(self, *, token: str) -> None:
        check_token(self.ref, token)
        meta = self._meta()
        if meta.get("current") == token:
            return
        if meta.get("pending") != token or not self.pending_path.exists():
            raise StoreUnavailable(self.ref, "no pending value for this rotation token", permanent=True)
        pending = _read_text(self.pending_path, ref=self.ref) or ""
        current = _read_text(self.path, ref=self.ref)
        if meta.get("promoting") != token:
            # 1. keep the running value; recorded before the switch, so a repeat never overwrites it with the new
            if current is not None:
                atomic_write(self.previous_path, current, ref=self.ref)
            meta["previous_candidate"] = meta.get("current")
            meta["promoting"] = token
            self._save_meta(meta)
        # 2. the switch: one rename; repeating it writes the same value again
        names = [n for n in (meta.get("pending_names") or "").split(",") if n]
        atomic_write(self.path, self._merge(current, pending, names), ref=self.ref)
        # 3. the bookkeeping
        with contextlib.suppress(FileNotFoundError):
            self.pending_path.unlink()
        self._save_meta({"current": token, "previous": meta.get("previous_candidate"), "pending": None})

    async def discard_pending(self, *, token: str) -> None:
        check_token(self.ref, token)
        meta = self._meta()
        if meta.get("current") == token:
            raise StoreUnavailable(self.ref, "this rotation's value is already current; nothing to discard",
                                   permanent=True)
        if meta.get("pending") != token:
            return
        if meta.get("promoting") == token:
            raise StoreUnavailable(self.ref, "this rotation's promotion has started; run promote again",
                                   permanent=True)
        with contextlib.suppress(FileNotFoundError):
            self.pending_path.unlink()
        meta["pending"] = meta["pending_names"] = None
        self._save_meta(meta)

    async def stages(self) -> dict[str, str]:
        meta = self._meta()
        out: dict[str, str] = {}
        for stage in ("current", "pending", "previous"):
            if self._stage_path(stage).exists():  # type: ignore[arg-type]
                out[stage] = meta.get(stage) or "unmanaged"
        return out


class FileDestination(_StagedFile):
    """`file:/path`: the file holds only the secret (no trailing newline); `fields` have no place in it."""

    scheme = "file"


# systemd.exec(5), EnvironmentFile=: names as for Environment= (a shell-like variable name)
_VAR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_BARE = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")


def quote_env_value(value: str) -> str:
    """A value as systemd reads it back unchanged: bare when only safe characters, else single-quoted
    (verbatim, may span lines), else double-quoted with \\ " ` $ escaped."""
    if _BARE.match(value):
        return value
    if "'" not in value:
        return f"'{value}'"
    escaped = re.sub(r'([\\"`$])', r"\\\1", value)
    return f'"{escaped}"'


def parse_env_file(text: str) -> dict[str, str]:
    """systemd's EnvironmentFile= parser (src/basic/env-file.c, parse_env_file_internal), as a state machine:
    comments (# ;) and lines without = are ignored; unquoted values drop leading/trailing whitespace and
    honour backslash escapes and line continuation; '...' is verbatim; "..." knows \\ " ` $ and newline."""
    out: dict[str, str] = {}
    i, n = 0, len(text)
    while i < n:
        # start of a line: skip leading whitespace
        while i < n and text[i] in " \t\r":
            i += 1
        if i >= n:
            break
        if text[i] in "#;":
            while i < n and text[i] != "\n":
                i += 1
            i += 1
            continue
        start = i
        while i < n and text[i] not in "=\n":
            i += 1
        if i >= n or text[i] == "\n":
            i += 1
            continue  # no "=": ignored
        key = text[start:i].rstrip(" \t\r")
        i += 1
        while i < n and text[i] in " \t\r":
            i += 1
        value: list[str] = []
        if i < n and text[i] == "'":
            i += 1
            while i < n and text[i] != "'":
                value.append(text[i])
                i += 1
            i += 1
            while i < n and text[i] != "\n":
                i += 1
        elif i < n and text[i] == '"':
            i += 1
            while i < n and text[i] != '"':
                c = text[i]
                if c == "\\" and i + 1 < n:
                    nxt = text[i + 1]
                    if nxt == "\n":
                        i += 2
                        continue
                    if nxt in '"\\`$':
                        value.append(nxt)
                    else:
                        value.append(c + nxt)
                    i += 2
                    continue
                value.append(c)
                i += 1
            i += 1
            while i < n and text[i] != "\n":
                i += 1
        else:
            trailing_ws = 0
            while i < n and text[i] != "\n":
                c = text[i]
                if c == "\\" and i + 1 < n:
                    nxt = text[i + 1]
                    if nxt != "\n":
                        value.append(nxt)
                    trailing_ws = 0
                    i += 2
                    continue
                value.append(c)
                trailing_ws = trailing_ws + 1 if c in " \t\r" else 0
                i += 1
            if trailing_ws:
                del value[-trailing_ws:]
        i += 1
        if _VAR.match(key):
            out[key] = "".join(value)
    return out


def _field_var(name: str) -> str:
    var = re.sub(r"[^A-Za-z0-9_]", "_", name).upper()
    return var if _VAR.match(var) else "_" + var


class EnvFileDestination(_StagedFile):
    """`envfile:/path#VAR`: a systemd EnvironmentFile; VAR holds the secret, each field an upper-case VAR line
    (access_key_id -> ACCESS_KEY_ID); every other line of the file is kept as it is."""

    scheme = "envfile"

    def __init__(self, ref: str, path: Path, var: str) -> None:
        super().__init__(ref, path)
        self.var = var

    def _extract(self, text: str) -> str | None:
        return parse_env_file(text).get(self.var) or None

    def _render(self, base: str | None, secret: Secret, fields: Mapping[str, str]) -> str:
        values = {self.var: secret.reveal()}
        values.update({_field_var(k): v for k, v in fields.items()})
        if any("\n" in v or "\r" in v for v in values.values()):
            raise StoreUnavailable(self.ref, "a value with a line break has no place in an EnvironmentFile",
                                   permanent=True)
        return _set_vars(base or "", values)

    def _names(self, fields: Mapping[str, str]) -> list[str]:
        return [self.var, *(_field_var(k) for k in fields)]

    def _merge(self, current: str | None, pending: str, names: list[str]) -> str:
        """The variables this rotation sets, written into the current file (other lines, edited meanwhile
        or not, stay as they are)."""
        return _set_vars(current or "", parse_env_file(pending), only=set(names or [self.var]))


def _set_vars(text: str, values: Mapping[str, str], only: set[str] | None = None) -> str:
    """`text` with each VAR of `values` set: its existing assignment line replaced, or appended."""
    if only is not None:
        values = {k: v for k, v in values.items() if k in only}
    lines = text.splitlines()
    done: set[str] = set()
    out: list[str] = []
    for line in lines:
        name = line.split("=", 1)[0].strip() if "=" in line and not line.lstrip().startswith(("#", ";")) else None
        if name in values:
            if name not in done:
                out.append(f"{name}={quote_env_value(values[name])}")
                done.add(name)
            continue
        out.append(line)
    out += [f"{k}={quote_env_value(v)}" for k, v in values.items() if k not in done]
    return "\n".join(out) + "\n"
