"""Malformed configs, one per kind of mistake: what the file says, and what the refusal must name."""

from __future__ import annotations

from dataclasses import dataclass

K = '[[keys]]\nname = "k"\nprovider = "openai"\n'  # a key without its secret
KEY = '[[keys]]\nname = "k"\nprovider = "openai"\nsecret = "env:KW_MAL_KEY"\n'
# A secret that must never be echoed back, whatever the mistake around it.
LITERAL = "sk-proj-MALFORMEDliteral0000secret0000ZZZ9"
SECRET_ENV = {"KW_MAL_KEY": "sk-proj-MALFORMEDenvironment000secret00ZZ7", "KW_MAL_EMPTY": "   "}


@dataclass(frozen=True)
class Case:
    kind: str
    text: str | bytes  # the file (bytes: written as is)
    names: str  # the field path (or, for syntax, the place) the refusal names


LISTEN = '[daemon]\nlisten = "127.0.0.1:0"\n'  # so a file that were taken would not bind a fixed port

CASES = [
    # -- syntax
    Case("toml: unclosed table header", LISTEN + "[[keys]\nname = 1\n", "line 3"),
    Case("toml: unterminated string", LISTEN + '[probe]\ninterval = "5m\n', "line 4"),
    Case("toml: key defined twice", '[daemon]\nlisten = "127.0.0.1:0"\nlisten = "127.0.0.1:1"\n', "line 3"),
    Case("toml: table defined twice", LISTEN + "[probe]\n[probe]\n", "line 4"),
    Case("file: not UTF-8", LISTEN.encode() + b'[[keys]]\nname = "caf\xe9"\n', "not UTF-8"),
    # -- wrong types
    Case("type: number as text", LISTEN + '[probe]\nconcurrency = "many"\n', "probe.concurrency"),
    Case("type: text where a table goes", 'alerts = "slack"\n' + LISTEN, "alerts"),
    Case("type: table where a list goes", LISTEN + '[keys]\nname = "k"\n', "keys"),
    Case("type: bool as number", '[daemon]\nlisten = "127.0.0.1:0"\nallow_literal_secrets = 3\n',
         "daemon.allow_literal_secrets"),
    Case("type: label value not text", LISTEN + KEY + "labels = { team = 1 }\n", "keys[0].labels.team"),
    # -- unknown fields
    Case("unknown: top-level section", LISTEN + "[deamon]\nlog_level = \"info\"\n", "deamon"),
    Case("unknown: field of a key", LISTEN + KEY + 'colour = "red"\n', "keys[0].colour"),
    Case("unknown: field of a sink", LISTEN + '[[alerts.sinks]]\nname = "log"\ntype = "console"\nlevel = 1\n',
         "alerts.sinks[0].level"),
    # -- values
    Case("duration: words", LISTEN + '[probe]\ninterval = "5 minutes"\n', "probe.interval"),
    Case("duration: negative", LISTEN + '[alerts]\nrepeat_interval = "-4h"\n', "alerts.repeat_interval"),
    Case("duration: negative number", LISTEN + "[probe]\ntimeout = -5\n", "probe.timeout"),
    Case("number: negative", LISTEN + "[probe]\nconcurrency = -1\n", "probe.concurrency"),
    Case("number: out of range", LISTEN + "[probe]\njitter = 2.0\n", "probe.jitter"),
    Case("number: negative percent", LISTEN + "[safety]\nmax_disabled_percent = -5\n",
         "safety.max_disabled_percent"),
    Case("choice: log level", '[daemon]\nlisten = "127.0.0.1:0"\nlog_level = "loud"\n', "daemon.log_level"),
    Case("choice: unknown provider", LISTEN + '[[keys]]\nname = "k"\nprovider = "opneai"\nsecret = "env:X"\n',
         "keys[0].provider"),
    Case("listen: port out of range", '[daemon]\nlisten = "127.0.0.1:70000"\n', "daemon.listen"),
    Case("listen: not an address", '[daemon]\nlisten = "999.1.1.1:9464"\n', "daemon.listen"),
    Case("database: unknown kind", LISTEN + 'database = "mongodb://db/keywatch"\n', "daemon.database"),
    Case("database: not a URL", LISTEN + 'database = "keywatch.db"\n', "daemon.database"),
    Case("url: not http(s)", LISTEN + KEY + 'base_url = "api.openai.com"\n', "keys[0].base_url"),
    # -- names and labels
    Case("name: spaces", LISTEN + '[[keys]]\nname = "prod key"\nprovider = "openai"\nsecret = "env:X"\n',
         "keys[0].name"),
    Case("label: invalid name", LISTEN + KEY + 'labels = { "team-name" = "x" }\n',
         "keys[0].labels.team-name: 'team-name' does not match"),
    Case("duplicate: key names", LISTEN + KEY + KEY, "keys[1].name"),
    Case("duplicate: sink names",
         LISTEN + '[[alerts.sinks]]\nname = "log"\ntype = "console"\n' * 2,
         "alerts.sinks[1].name: 'log' is already used"),
    Case("duplicate: account names",
         LISTEN + '[[accounts]]\nname = "a"\nprovider = "openai"\n' * 2,
         "accounts"),
    # -- references
    Case("reference: key to no account", LISTEN + KEY + 'account = "nope"\n', "keys[0].account"),
    Case("reference: route to no sink", LISTEN + '[[alerts.routes]]\nsinks = ["pager"]\n',
         "alerts.routes[0].sinks: no sink named 'pager'"),
    Case("reference: budget to no key", LISTEN + KEY + '[[budgets]]\nname = "b"\nkey = "nope"\nusd = 10\n',
         "budgets[0].key"),
    Case("reference: policy to no pool",
         LISTEN + KEY + '[[policies]]\nname = "p"\nwhen = { health = ["invalid"] }\n'
         'actions = [{ type = "pool_remove", pools = ["nope"] }]\n', "policies: [0] (p) actions[0].pools"),
    # -- secrets
    Case("secret: empty reference", LISTEN + '[[keys]]\nname = "k"\nprovider = "openai"\nsecret = ""\n',
         "keys[0].secret"),
    Case("secret: variable not set", LISTEN + K + 'secret = "env:KW_MAL_UNSET"\n',
         "keys[0].secret"),
    Case("secret: variable empty", LISTEN + K + 'secret = "env:KW_MAL_EMPTY"\n',
         "keys[0].secret"),
    Case("secret: file missing", LISTEN + '[[keys]]\nname = "k"\nprovider = "openai"\n'
         'secret = "file:/nonexistent/keywatch/secret"\n', "keys[0].secret"),
    Case("secret: literal in the file", LISTEN + K + f'secret = "{LITERAL}"\n',
         "keys[0].secret"),
    Case("secret: admin secret not set", LISTEN + '[[accounts]]\nname = "a"\nprovider = "openai"\n'
         'admin_secret = "env:KW_MAL_UNSET"\n', "accounts[0].admin_secret"),
    # -- sinks
    Case("sink: unknown type", LISTEN + '[[alerts.sinks]]\nname = "pd"\ntype = "pagerduty"\n', "alerts.sinks[0].type"),
    Case("sink: url missing", LISTEN + '[[alerts.sinks]]\nname = "s"\ntype = "slack"\n', "alerts.sinks[0]"),
    Case("sink: secret URL written in the file", LISTEN + '[[alerts.sinks]]\nname = "s"\ntype = "slack"\n'
         f'url = "https://hooks.slack.com/services/{LITERAL}"\n', "alerts.sinks[0].url: a slack URL is a secret"),
    Case("sink: reference not set", LISTEN + '[[alerts.sinks]]\nname = "s"\ntype = "webhook"\n'
         'url = "env:KW_MAL_KEY"\nsecret = "env:KW_MAL_UNSET"\n', "alerts.sinks[0].secret"),
    # -- policies
    Case("policy: unknown action", LISTEN + KEY + '[[policies]]\nname = "p"\nwhen = { health = ["invalid"] }\n'
         'actions = ["explode"]\n', "policies[0].actions"),
    Case("policy: unknown health", LISTEN + KEY + '[[policies]]\nname = "p"\nwhen = { health = ["dead"] }\n'
         'actions = ["disable"]\n', "policies[0].when.health"),
    Case("policy: no condition", LISTEN + KEY + '[[policies]]\nname = "p"\nactions = ["disable"]\n',
         "policies[0]"),
]
