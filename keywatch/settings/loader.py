"""Reading keywatch.toml into a validated Config and a resolved Inventory.

Every problem is reported, each on its own line naming the file, the field path (`keys[3].secret`),
what is wrong and what is expected, so one run shows all that needs fixing.
"""

from __future__ import annotations

import functools
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, SimpleNamespace
from typing import Any

from pydantic import ValidationError

from keywatch.domain import Account, ManagedKey
from keywatch.providers import registry
from keywatch.settings import secrets
from keywatch.settings.schema import (
    KEYS_APART,
    LABEL_NAME_PATTERN,
    NAME_PATTERN,
    Config,
    KeyConfig,
    reference_problems,
)
from keywatch.settings.types import NAME_PATTERN as TYPES_NAME_PATTERN

NO_OPTIONS: Any = MappingProxyType({})  # options or extra secrets of every key without any: one read-only mapping


class ConfigError(Exception):
    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


@dataclass
class Inventory:
    """The loaded config: `keys` are the enabled keys with their secrets resolved; `config` holds every
    other setting (its `keys` list is left empty, see build_inventory)."""

    config: Config
    source: str
    keys: list[ManagedKey]
    accounts: dict[str, Account]
    warnings: list[str] = field(default_factory=list)
    # key name -> why its secret store could not be read at this load (the cached value is in use)
    stale_secrets: dict[str, str] = field(default_factory=dict)

    def secrets(self) -> list[str]:
        out = [k.secret.reveal() for k in self.keys if k.secret]
        out += [s.reveal() for k in self.keys for s in k.extra_secrets.values()]
        out += [a.admin_secret.reveal() for a in self.accounts.values() if a.admin_secret]
        out += [s.reveal() for a in self.accounts.values() for s in a.options.values() if isinstance(s, secrets.Secret)]
        return out

    def key(self, name: str) -> ManagedKey:
        for k in self.keys:
            if k.name == name:
                return k
        raise KeyError(f"no key named {name!r} in {self.source} (known: {', '.join(k.name for k in self.keys)})")


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after", "function-before", "[key]") or str(part).startswith(
            ("function-", "constrained-")
        ):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out


_PATTERN_HINTS = {
    LABEL_NAME_PATTERN: "letters, digits and _, not starting with a digit",
    NAME_PATTERN: "letters, digits, - _ .",
    TYPES_NAME_PATTERN: "letters, digits, - _ .",
}
# `sinks[1].name: ...`: a section's validator naming a field inside the section.
_RELATIVE = re.compile(r"^(?P<path>[A-Za-z_]\w*(?:\[\d+\])*(?:\.[A-Za-z_]\w*(?:\[\d+\])*)*): (?P<text>.+)$", re.S)


def _relative_problems(where: str, text: str) -> list[str]:
    """A section's own checks report `sinks[1].name: ...; routes[0].sinks: ...` under the section's path:
    one problem per field, each with its full path (`alerts.sinks[1].name: ...`)."""
    parts: list[str] = []
    for piece in text.split("; "):
        if parts and not _is_relative(piece):
            parts[-1] += "; " + piece  # a sentence that goes on, not another problem
        else:
            parts.append(piece)
    out = []
    for part in parts:
        m = _RELATIVE.match(part)
        out.append(f"{where}.{m['path']}: {m['text']}" if m and _is_relative(part) else f"{where}: {part}")
    return out


def _is_relative(piece: str) -> bool:
    m = _RELATIVE.match(piece)
    return bool(m) and re.split(r"[.\[]", m["path"], maxsplit=1)[0] in _field_names()


@functools.cache
def _field_names() -> frozenset[str]:
    """Every field name of the schema, at any depth."""
    names: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            props = node.get("properties")
            if isinstance(props, dict):
                names.update(props)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(Config.model_json_schema())
    return frozenset(names)


def _friendly(err: dict[str, Any]) -> str:
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        import difflib

        unknown = str(err["loc"][-1]) if err.get("loc") else ""
        near = difflib.get_close_matches(unknown, sorted(_field_names()), n=1, cutoff=0.7)
        if near:
            return f"unknown field (did you mean {near[0]}?)"
        return "unknown field (check the spelling; `keywatch config schema` lists every field)"
    if kind == "missing":
        return "is required"
    if kind == "string_pattern_mismatch" and "pattern" in err.get("ctx", {}):
        pattern = err["ctx"]["pattern"]
        hint = _PATTERN_HINTS.get(pattern, "")
        return f"{err['input']!r} does not match {pattern}" + (f" ({hint})" if hint else "")
    if kind == "literal_error":
        return f"{err.get('input')!r} is not allowed: {msg.removeprefix('Input should be ')}".replace(
            "should be", "expected"
        )
    msg = msg.removeprefix("Value error, ")
    return msg


def format_validation_error(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors(include_url=False):
        where = _loc(err["loc"])
        text = _friendly(err)
        if not where:  # cross-reference checks carry their own paths, one per line
            problems.extend(text.splitlines())
        elif where == "policies":  # `policies: [0] (name) actions[1] ...`, as the policy checks write them
            problems.append(f"{where}: {text}")
        else:
            problems.extend(_relative_problems(where, text))
    return problems


def parse(text: str, source: str = "<config>") -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [f"not valid TOML: {exc}"]) from None
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, format_validation_error(exc)) from None


def _read(path: str | Path) -> str:
    p = Path(path)
    try:
        return p.read_text()
    except FileNotFoundError:
        raise ConfigError(str(p), ["file not found"]) from None
    except OSError as exc:
        raise ConfigError(str(p), [f"cannot be read: {exc.strerror}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(str(p), [f"is not UTF-8 text (byte {exc.start}); save it as UTF-8"]) from None


def load(path: str | Path) -> Config:
    return parse(_read(path), str(Path(path)))


def load_settings(path: str | Path) -> Config:
    """The config at `path` validated as `load` does, without its keys (`Config.keys` is empty): for a
    caller that needs the other settings and must not hold every [[keys]] model. Raises ConfigError."""
    lean = _lean(path, resolve=False, alert_sinks=False)
    if lean is not None:
        return lean[0]
    return load(path).model_copy(update={"keys": []})


def _resolve(ref: str, where: str, owner: str, allow_literal: bool, problems: list[str], warnings: list[str],
             stores: Any = None, stale: dict[str, str] | None = None, name: str = ""):
    if secrets.scheme_of(ref) in secrets.DEFERRED_SCHEMES:
        return None
    try:
        if secrets.scheme_of(ref) in secrets.SOURCE_SCHEMES:
            value, why = secrets.resolve_source(ref, stores)
            if why is not None and stale is not None:
                stale[name] = why
            return value
        value = secrets.resolve(ref, allow_literal=allow_literal)
    except secrets.SecretError as exc:
        opt_in = ("; or, to keep literal secrets in this file (not recommended), set "
                  "daemon.allow_literal_secrets = true") if "literal secret" in str(exc) else ""
        problems.append(f"{where}: {owner}: {exc}{opt_in}")
        return None
    if not secrets.is_reference(ref):
        warnings.append(
            f"{where}: {owner}: the secret is written in the config file; prefer env:, file: or credential:"
        )
    return value


class _Builder:
    """Resolved accounts and keys of a validated Config, one [[keys]] entry at a time (`add`), collecting
    every problem and warning; `inventory()` ends it."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.allow = config.daemon.allow_literal_secrets
        self.problems: list[str] = []
        self.warnings: list[str] = []
        self.stale: dict[str, str] = {}
        self.keys: list[ManagedKey] = []
        # Keys with the same labels share one dict (read-only everywhere): at 100,000 keys of a few teams that
        # is a handful of dicts instead of one per key.
        self._labels: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
        self._options: dict[str, dict[str, Any]] = {}
        self.accounts = self._accounts()

    def _accounts(self) -> dict[str, Account]:
        problems, warnings, allow = self.problems, self.warnings, self.allow
        accounts: dict[str, Account] = {}
        for i, a in enumerate(self.config.accounts):
            owner = f"account {a.name!r}"
            admin = _resolve(a.admin_secret, f"accounts[{i}].admin_secret", owner, allow, problems, warnings) if (
                a.admin_secret
            ) else None
            options: dict[str, Any] = a.model_dump(
                exclude={"name", "provider", "admin_secret", "base_url", "allow_destructive", "client_secret"},
                exclude_none=True,
            )
            if a.client_secret:
                cs = _resolve(a.client_secret, f"accounts[{i}].client_secret", owner, allow, problems, warnings)
                if cs:
                    options["client_secret"] = cs
            accounts[a.name] = Account(
                name=a.name, provider=a.provider, admin_secret=admin, base_url=a.base_url,
                allow_destructive=a.allow_destructive, options=options,
            )
        return accounts

    def add(self, i: int, k: KeyConfig) -> None:
        """`keys[i]`, resolved into a ManagedKey when it is enabled (a disabled key's secret may be gone
        already; it is not needed)."""
        if not k.enabled:
            return
        problems, warnings, config = self.problems, self.warnings, self.config
        scheme = secrets.scheme_of(k.secret)
        if scheme in secrets.DEFERRED_SCHEMES:
            able = [p for p in registry.names() if scheme in registry.info(p).secret_schemes]
            if scheme not in registry.info(k.provider).secret_schemes:
                problems.append(f"keys[{i}].secret: key {k.name!r}: {scheme}: references work only for "
                                f"{', '.join(able)} keys")
                return
            if not k.account:
                problems.append(f"keys[{i}].secret: key {k.name!r}: {scheme}: references need `account` on the key")
                return
        secret = _resolve(k.secret, f"keys[{i}].secret", f"key {k.name!r}", self.allow, problems, warnings,
                          config.secret_stores, self.stale, k.name)
        options = k.model_dump(
            exclude={"name", "provider", "secret", "base_url", "probe", "model", "labels", "account", "enabled"},
            exclude_none=True,
        )
        if k.access_key_id and secrets.is_reference(k.access_key_id):  # beside the secret, rotated with it
            key_id = _resolve(k.access_key_id, f"keys[{i}].access_key_id", f"key {k.name!r}", False, problems,
                              warnings, config.secret_stores, self.stale, k.name)
            if key_id is not None:
                options["access_key_id"] = key_id.reveal()
        self.keys.append(
            ManagedKey(
                name=k.name, provider=_shared(k.provider), secret=secret, secret_ref=k.secret,
                base_url=_shared(k.base_url), probe=_shared(k.probe), model=_shared(k.model),
                labels=self._labels.setdefault(tuple(sorted(k.labels.items())), dict(k.labels)),
                account=_shared(k.account), extra_secrets=NO_OPTIONS,
                # Equal options are one dict (thousands of keys carry the same `publish = []`); never mutated.
                options=self._options.setdefault(repr(sorted(options.items())), options) if options else NO_OPTIONS,
            )
        )

    def inventory(self, source: str) -> Inventory:
        if self.problems:
            raise ConfigError(source, self.problems)
        from keywatch.engine import capabilities

        config, warnings = self.config, self.warnings
        warnings += capabilities.warnings(config.policies, self.keys, config.safety)
        if config.alerts is not None and "default_key_alerts" in config.alerts.model_fields_set:
            warnings.append("alerts.default_key_alerts has no effect: key alerts are decided by policies, the "
                            "built-in ones included (safety.default_policies); remove the setting")
        # The key list lives once, resolved, in Inventory.keys: at thousands of keys the validated models
        # would double the daemon's memory for nothing.
        settings = config.model_copy(update={"keys": []}) if config.keys else config
        return Inventory(config=settings, source=source, keys=self.keys, accounts=self.accounts,
                         warnings=warnings, stale_secrets=self.stale)


def build_inventory(config: Config, source: str) -> Inventory:
    builder = _Builder(config)
    for i, k in enumerate(config.keys):
        builder.add(i, k)
    return builder.inventory(source)


class _KeyRef:
    """What the checks across sections read of a disabled key (an enabled one is its ManagedKey)."""

    __slots__ = ("account", "enabled", "labels", "name", "provider")

    def __init__(self, k: KeyConfig) -> None:
        self.name, self.provider, self.account, self.labels, self.enabled = (
            k.name, k.provider, k.account, k.labels, k.enabled)


def _lean(path: str | Path, *, resolve: bool, alert_sinks: bool) -> tuple[Config, Inventory | None] | None:
    """The config validated one [[keys]] entry at a time, each model let go once its key is made (the
    settings without keys, the resolved keys and, when `resolve`, the Inventory): at 100,000 keys the models
    of the whole list at once would be about 190 MB more at start. None when the file does not validate: the
    whole file is then validated at once (`load`, `build_inventory`), which reports every problem in one
    pass, in the schema's order. Secret references that do not resolve in a file that validates are reported
    here (ConfigError), as the whole file reports them, without reading every secret a second time."""
    try:
        data = tomllib.loads(_read(path))
    except tomllib.TOMLDecodeError:
        return None
    raw = data.pop("keys", [])
    if not isinstance(raw, list):
        return None
    try:  # the checks that read every key (capabilities, references) are made below, with the keys made
        config = Config.model_validate({**data, "keys": []}, context=KEYS_APART)
    except ValidationError:
        return None
    del data
    builder = _Builder(config) if resolve else None
    refs: list[Any] = []
    for i, entry in enumerate(raw):
        raw[i] = None  # the TOML table goes as its key is made
        try:
            k = KeyConfig.model_validate(entry)
        except ValidationError:
            return None
        if builder is not None and k.enabled:
            made = len(builder.keys)
            builder.add(i, k)  # a secret that does not resolve is a problem noted, and no key
            refs.append(builder.keys[-1] if len(builder.keys) > made else _KeyRef(k))
        else:
            refs.append(_KeyRef(k))
    from keywatch.engine.capabilities import errors_for_config

    if reference_problems(refs, config.accounts, config.budgets) or errors_for_config(config.policies,
                                                                                       {"keys": refs}):
        return None
    del refs
    sinks = alert_sink_problems(config) if alert_sinks else []
    if builder is None:
        return (config, None) if not sinks else None
    if builder.problems or sinks:  # the whole file's report: the accounts' and keys' problems, then the sinks'
        raise ConfigError(str(path), builder.problems + sinks)
    return config, builder.inventory(str(path))


def _shared(value: str | None) -> str | None:
    """One string object for a value many keys repeat (provider, base URL, model ...), not one per key."""
    return sys.intern(value) if value is not None else None


def alert_sink_problems(config: Config) -> list[str]:
    """Resolve the `[[alerts.sinks]]` secret references as the daemon's alerts capability does at start, so a
    reference that does not resolve is refused by `config validate`, and by `run` before anything starts
    (not after the database was migrated). Each problem names the field, never a value."""
    from keywatch.notify.registry import SinkConfigError, resolve_sinks

    try:
        resolve_sinks(config.alerts, allow_literal=config.daemon.allow_literal_secrets)
    except SinkConfigError as exc:
        return [f"{p}; fix the reference or remove the sink" for p in exc.problems]
    return []


def load_inventory(path: str | Path, *, alert_sinks: bool = True) -> Inventory:
    """The config at `path`, validated, with every secret reference resolved. `alert_sinks=False` leaves the
    alert sinks' references to the alerts capability (on a reload, a sink that fails keeps the running
    [alerts] config while the rest of the new config applies)."""
    lean = _lean(path, resolve=True, alert_sinks=alert_sinks)
    if lean is not None and lean[1] is not None:
        return lean[1]
    try:  # something is wrong: the whole file at once, for every problem in one report
        config = load(path)
    except ConfigError as exc:
        # The file does not validate: still say which secret references cannot be resolved, in the same pass.
        more = [p for p in _raw_secret_problems(path) + _raw_reference_problems(path)
                if not any(p in known for known in exc.problems)]
        raise ConfigError(exc.source, exc.problems + more) from None
    source = str(path)
    problems = alert_sink_problems(config) if alert_sinks else []
    try:
        inventory = build_inventory(config, source)
    except ConfigError as exc:
        raise ConfigError(source, exc.problems + problems) from None
    if problems:
        raise ConfigError(source, problems)
    return inventory


def _raw_secret_problems(path: str | Path) -> list[str]:
    """The unresolvable secret references of keys and accounts, read from a file that does not validate (so
    `config validate` reports them with the schema errors, not in a second round)."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except Exception:
        return []
    daemon = data.get("daemon") if isinstance(data.get("daemon"), dict) else {}
    allow = daemon.get("allow_literal_secrets") is True
    problems: list[str] = []
    warnings: list[str] = []
    for section, fields in (("keys", ("secret",)), ("accounts", ("admin_secret", "client_secret"))):
        entries = data.get(section)
        if not isinstance(entries, list):
            continue
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or entry.get("enabled") is False:
                continue  # a disabled key's secret is never read (it may be gone already)
            owner = f"{section.rstrip('s')} {entry.get('name')!r}"
            for name in fields:
                ref = entry.get(name)
                if isinstance(ref, str) and ref:
                    _resolve(ref, f"{section}[{i}].{name}", owner, allow, problems, warnings)
    return problems


def _raw_reference_problems(path: str | Path) -> list[str]:
    """The cross-section reference problems (unknown account, duplicate names, budgets naming unknown keys) of
    a file that does not validate, where the schema's own check does not run."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except Exception:
        return []

    def entries(section: str, fields: tuple[str, ...]) -> list[SimpleNamespace]:
        raw = data.get(section)
        if not isinstance(raw, list):
            return []
        return [SimpleNamespace(**{f: (e.get(f) if isinstance(e, dict) else None) for f in fields}) for e in raw]

    return reference_problems(entries("keys", ("name", "account", "provider")),
                              entries("accounts", ("name", "provider")),
                              entries("budgets", ("name", "key", "account")))
