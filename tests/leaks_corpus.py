"""A generated corpus for `keywatch scan`: managed secrets of many formats planted in text, JSON, YAML, .env,
logs and minified JS, and in git history (in files deleted or changed since), one sample of every provider
key shape, and a clean corpus of the same size with the things that look almost like keys (hashes, UUIDs,
base64 blobs, placeholders). Shared by tests/unit/test_leaks_scanner.py and tests/bench/bench_scan.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import string
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

B62 = string.ascii_letters + string.digits
HEX = "0123456789abcdef"
WORDS = (
    "the",
    "key",
    "rotation",
    "policy",
    "service",
    "request",
    "response",
    "token",
    "budget",
    "provider",
    "model",
    "latency",
    "retry",
    "deploy",
    "config",
    "cache",
    "region",
    "user",
    "project",
    "account",
    "error",
    "warning",
    "handler",
    "queue",
    "worker",
    "build",
    "release",
    "stream",
    "batch",
    "sample",
    "metric",
    "alert",
    "pool",
    "health",
    "status",
    "window",
    "bucket",
)

# (format, provider, config fields): the managed keys' formats; `gateway` and `odd` match no public rule
FORMATS = (
    ("openai", "openai", {}),
    ("openai_legacy", "openai", {}),
    ("anthropic", "anthropic", {}),
    ("openrouter", "openrouter", {}),
    ("deepseek", "deepseek", {}),
    ("azure", "azure_openai", {"endpoint": "https://corp-eu.openai.azure.com"}),
    ("gateway", "openai_compatible", {"base_url": "http://127.0.0.1:9/v1"}),
    ("odd", "openai_compatible", {"base_url": "http://127.0.0.1:9/v1"}),
)
KINDS = ("txt", "json", "yaml", "env", "log", "js")


def _r(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choices(alphabet, k=n))


def _body(rng: random.Random, n: int) -> str:
    """Random key body from [A-Za-z0-9_-] that starts and ends with a letter or digit."""
    return rng.choice(B62) + _r(rng, B62 + "_-", n - 2) + rng.choice(B62)


def secret_of(fmt: str, rng: random.Random) -> str:
    if fmt == "openai":
        return f"sk-proj-{_body(rng, 74)}T3BlbkFJ{_body(rng, 74)}"
    if fmt == "openai_legacy":
        return f"sk-{_r(rng, B62, 20)}T3BlbkFJ{_r(rng, B62, 20)}"
    if fmt == "anthropic":
        return f"sk-ant-api03-{_body(rng, 93)}AA"
    if fmt == "openrouter":
        return f"sk-or-v1-{_r(rng, HEX, 64)}"
    if fmt == "deepseek":
        return f"sk-{_r(rng, string.ascii_lowercase + string.digits, 32)}"
    if fmt == "azure":
        return _r(rng, HEX, 32)
    if fmt == "gateway":
        return f"gw_live_{_r(rng, B62, 40)}"
    return _r(rng, B62 + "!#%+./:=@^~", 30)  # a format no rule knows, with punctuation


def provider_samples(rng: random.Random) -> dict[str, str]:
    """One unmanaged key per rule in keywatch.leaks.patterns (rule id -> the line that carries it)."""
    azure84 = (
        f"{_r(rng, B62, 52)}JQQJ99{rng.choice(B62)}{rng.choice('ABCDEFGHIJKL')}{_r(rng, B62, 12)}AAABACOG"
        f"{_r(rng, B62, 4)}"
    )
    return {
        "openai-api-key": f'OPENAI_API_KEY="sk-svcacct-{_body(rng, 58)}T3BlbkFJ{_body(rng, 58)}"',
        "openai-api-key-loose": f"export OPENAI_KEY=sk-service-{_body(rng, 30)}T3BlbkFJ{_body(rng, 30)}",
        "anthropic-api-key": f"anthropic_key: sk-ant-api03-{_body(rng, 93)}AA",
        "anthropic-admin-key": f'"admin": "sk-ant-admin01-{_body(rng, 93)}AA"',
        "aws-access-key-id": f"aws_access_key_id = AKIA{_r(rng, string.ascii_uppercase + '234567', 16)}",
        "openrouter-api-key": f"Authorization: Bearer sk-or-v1-{_r(rng, HEX, 64)}",
        "deepseek-api-key": f"DEEPSEEK_API_KEY=sk-{_r(rng, string.ascii_lowercase + string.digits, 32)}",
        "azure-openai-key": f'{{"azure_openai_api_key": "{_r(rng, HEX, 32)}"}}',
        "azure-openai-key-84": f"AZURE_AI_KEY={azure84}",
    }


@dataclass
class Planted:
    secret: str
    name: str
    path: str  # relative to the corpus root
    line: int
    commit: bool = False  # only in git history


@dataclass
class Corpus:
    root: Path
    keys: list[tuple[str, str, str, dict[str, str]]] = field(default_factory=list)  # name, provider, secret
    planted: list[Planted] = field(default_factory=list)
    samples: dict[str, tuple[str, int]] = field(default_factory=dict)  # rule id -> (path, line)
    bytes: int = 0

    def config(self, path: Path) -> Path:
        """A keywatch.toml whose keys are the managed secrets (literal: a test config)."""
        out = ["[daemon]", "allow_literal_secrets = true", f'database = "sqlite:///{path.parent}/kw.db"', ""]
        for name, provider, secret, fields in self.keys:
            out += ["[[keys]]", f'name = "{name}"', f'provider = "{provider}"', f"secret = {json.dumps(secret)}"]
            out += [f"{k} = {json.dumps(v)}" for k, v in fields.items()]
            out.append("")
        path.write_text("\n".join(out))
        return path


def assert_hidden(secrets: list[str], text: str) -> None:
    """No 8 characters of any secret show in `text`, except inside its masked form (prefix and last four)."""
    from keywatch.domain import mask

    grams = {text[i : i + 8] for i in range(len(text) - 7)}
    for s in secrets:
        shown = mask(s)
        leaked = [s[i : i + 8] for i in range(len(s) - 7) if s[i : i + 8] in grams and s[i : i + 8] not in shown]
        assert not leaked, (shown, leaked)


# -- filler ---------------------------------------------------------------------------------------------------
def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randint(6, 14))).capitalize() + "."


def _lookalike(rng: random.Random) -> str:
    """Things a naive scanner flags: digests, ids, base64, placeholders, `sk-` words."""
    data = rng.randbytes(24)
    return rng.choice(
        [
            hashlib.sha256(data).hexdigest(),
            hashlib.sha1(data).hexdigest(),
            str(uuid.UUID(bytes=data[:16])),
            base64.b64encode(rng.randbytes(45)).decode(),
            '"api_key": "${OPENAI_API_KEY}"',
            "api_key = os.environ['AZURE_OPENAI_KEY']",
            "sk-learn and sk-image are python packages",
            "AKIAIOSFODNN7EXAMPLE",
            f"commit {hashlib.sha1(data).hexdigest()}",
            "https://corp-eu.openai.azure.com/openai/deployments/gpt-4o/chat/completions",
        ]
    )


def filler_lines(kind: str, rng: random.Random, n: int) -> list[str]:
    out = []
    for i in range(n):
        word = rng.choice(WORDS)
        if kind == "json":
            out.append(f'  "{word}_{i}": {json.dumps(_lookalike(rng) if i % 7 == 0 else _sentence(rng))},')
        elif kind == "yaml":
            out.append(f"{word}_{i}: {json.dumps(_lookalike(rng) if i % 7 == 0 else _sentence(rng))}")
        elif kind == "env":
            out.append(f"{word.upper()}_{i}={_lookalike(rng) if i % 5 == 0 else rng.randint(0, 10**6)}")
        elif kind == "log":
            lvl = rng.choice(("INFO", "WARN", "DEBUG"))
            extra = _lookalike(rng) if i % 9 == 0 else _sentence(rng)
            out.append(f"2026-03-01T12:{i % 60:02d}:{i % 59:02d}Z {lvl} {word}: {extra}")
        elif kind == "js":
            out.append(f"var {word}{i}={json.dumps(_lookalike(rng) if i % 11 == 0 else _sentence(rng))};")
        else:
            out.append(_lookalike(rng) if i % 13 == 0 else _sentence(rng))
    return out


def _carrier(kind: str, secret: str, name: str) -> str:
    env = name.upper().replace("-", "_")
    if kind == "json":
        return f'  "{name}": {json.dumps(secret)},'
    if kind == "yaml":
        return f"{name}: {json.dumps(secret)}"
    if kind == "env":
        return f"{env}={secret}"
    if kind == "log":
        return f"2026-03-01T12:00:00Z ERROR request failed with key {secret} (401)"
    if kind == "js":
        return f'headers:{{Authorization:"Bearer {secret}"}},'
    return f"The key for {name} is {secret} do not share it."


def _file_text(kind: str, lines: list[str]) -> str:
    if kind == "js":  # minified: one long line
        return "".join(lines) + "\n"
    if kind == "json":
        return "{\n" + "\n".join(lines) + '\n  "end": true\n}\n'
    return "\n".join(lines) + "\n"


# -- the corpus ------------------------------------------------------------------------------------------------
def build(
    root: Path,
    *,
    managed: int,
    files: int,
    lines_per_file: int,
    seed: int = 7,
    clean: bool = False,
    git_history: bool = True,
    samples: bool = True,
) -> Corpus:
    """`files` files (a sixth of each kind) of `lines_per_file` lines; unless `clean`, `managed` managed
    secrets spread over them (every one planted once), the provider samples, and a git repository under
    root/repo whose history holds secrets in files since deleted or changed."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    corpus = Corpus(root)
    for i in range(managed):
        fmt, provider, fields = FORMATS[i % len(FORMATS)]
        corpus.keys.append((f"{fmt.replace('_', '-')}-{i:05d}", provider, secret_of(fmt, rng), fields))
    in_history = [] if clean or not git_history else corpus.keys[: max(2, managed // 20)]
    on_disk = [] if clean else corpus.keys[len(in_history) :]
    per_file: dict[int, list[tuple[str, str]]] = {}
    for j, (name, _, secret, _) in enumerate(on_disk):
        per_file.setdefault(j % files, []).append((name, secret))
    sample_lines = list(provider_samples(rng).items()) if samples and not clean else []
    for f in range(files):
        kind = KINDS[f % len(KINDS)]
        lines = filler_lines(kind, rng, lines_per_file)
        rel = f"{kind}/file-{f:04d}.{'min.js' if kind == 'js' else kind}"
        inserts: list[tuple[int, str]] = []
        for name, secret in per_file.get(f, []):
            inserts.append((rng.randrange(len(lines) + 1), _carrier(kind, secret, name)))
        if f < len(sample_lines):
            text = sample_lines[f][1]
            inserts.append((rng.randrange(len(lines) + 1), text if kind != "js" else text + ";"))
        for pos, text in sorted(inserts, key=lambda x: x[0], reverse=True):
            lines.insert(pos, text)
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _file_text(kind, lines)
        path.write_text(data)
        corpus.bytes += len(data)
        for idx, text in enumerate(lines):
            line = 1 if kind == "js" else idx + 1 + (1 if kind == "json" else 0)
            for name, secret in per_file.get(f, []):
                if secret in text:
                    corpus.planted.append(Planted(secret, name, rel, line))
            if f < len(sample_lines) and sample_lines[f][1] in text:
                corpus.samples[sample_lines[f][0]] = (rel, line)
    if git_history:
        corpus.bytes += _history(root / "repo", in_history, rng, corpus, clean)
    return corpus


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        [
            "git",
            "-C",
            str(repo),
            "-c",
            "user.name=dev",
            "-c",
            "user.email=dev@example.com",
            "-c",
            "commit.gpgsign=false",
            *args,
        ],
        check=True,
        capture_output=True,
    )


def _history(
    repo: Path, keys: list[tuple[str, str, str, dict[str, str]]], rng: random.Random, corpus: Corpus, clean: bool
) -> int:
    """A repository whose current tree holds no secret: half of `keys` were in a file since deleted, the
    other half in lines since replaced."""
    repo.mkdir(parents=True, exist_ok=True)
    _git(repo, "init", "-q", "-b", "main")
    size = 0
    readme = "\n".join(filler_lines("txt", rng, 50)) + "\n"
    (repo / "README.md").write_text(readme)
    size += len(readme)
    deleted, changed = keys[: len(keys) // 2], keys[len(keys) // 2 :]
    env = "\n".join(filler_lines("env", rng, 40) + [f"{n.upper().replace('-', '_')}={s}" for n, _, s, _ in deleted])
    (repo / ".env").write_text(env + "\n")
    size += len(env)
    settings = filler_lines("yaml", rng, 40) + [f"{n}: {json.dumps(s)}" for n, _, s, _ in changed]
    (repo / "settings.yaml").write_text("\n".join(settings) + "\n")
    size += len("\n".join(settings))
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "first version")
    for i, (name, _, secret, _) in enumerate(deleted):
        corpus.planted.append(Planted(secret, name, "repo/.env", 41 + i, commit=True))
    for i, (name, _, secret, _) in enumerate(changed):
        corpus.planted.append(Planted(secret, name, "repo/settings.yaml", 41 + i, commit=True))
    (repo / ".env").unlink()
    (repo / "settings.yaml").write_text("\n".join(settings[:40] + [f"{n}: ${{{n}}}" for n, *_ in changed]) + "\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "secrets come from the environment now")
    return size
