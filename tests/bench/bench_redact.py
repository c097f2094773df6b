"""Benchmark: the redactor on the log path. Not part of the test suite; it prints its figures. Run:

    .venv/bin/python tests/bench/bench_redact.py [--secrets 1000] [--lines 10000]

Loads `--secrets` keys (OpenAI-shaped, Anthropic-shaped and gateway tokens of no known shape) and a few
sink URLs, then redacts `--lines` JSON log lines like the daemon's (key names, masked forms, fingerprints,
timestamps, error text; one in ten quotes a secret whole or its first 20 characters) and prints the time.
"""

from __future__ import annotations

import argparse
import json
import random
import string
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from keywatch.domain import fingerprint, mask
from keywatch.redact import REGISTRY, SecretRegistry


def secrets_of(n: int, rng: random.Random) -> list[str]:
    alphabet = string.ascii_letters + string.digits
    out = []
    for i in range(n):
        body = "".join(rng.choices(alphabet, k=48))
        out.append(("sk-proj-", "sk-ant-api03-", "gw-")[i % 3] + body)
    out += [f"https://hooks.slack.com/services/T{i:08d}/B{i:08d}/{''.join(rng.choices(alphabet, k=24))}"
            for i in range(5)]
    return out


def lines_of(n: int, secrets: list[str], rng: random.Random) -> list[str]:
    lines = []
    for i in range(n):
        s = secrets[i % len(secrets)]
        error = "200 OK"
        if i % 10 == 0:
            error = f"401 Incorrect API key provided: {s if i % 20 else s[:20]}"
        lines.append(json.dumps({
            "event": "probe_result", "key": f"team-{i % 100:02d}-key-{i:05d}", "provider": "openai",
            "health": "healthy", "masked": mask(s), "fingerprint": fingerprint(s), "latency_ms": 123.45,
            "error": error, "logger": "keywatch.prober", "level": "debug",
            "timestamp": "2025-01-01T00:00:00.000000Z",
        }))
    return lines


def run(registry: SecretRegistry, lines: list[str]) -> float:
    t0 = time.perf_counter()
    for line in lines:
        registry.redact(line)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--secrets", type=int, default=1000)
    parser.add_argument("--lines", type=int, default=10_000)
    args = parser.parse_args()
    rng = random.Random(7)
    secrets = secrets_of(args.secrets, rng)
    lines = lines_of(args.lines, secrets, rng)
    t0 = time.perf_counter()
    REGISTRY.replace(secrets)
    load = time.perf_counter() - t0
    empty = SecretRegistry()
    base = run(empty, lines)  # the key-shape patterns alone
    took = run(REGISTRY, lines)
    leaks = sum(1 for line in lines for s in secrets[:3] if s[:20] in REGISTRY.redact(line))
    print(f"redact: {args.lines} log lines ({sum(map(len, lines)) / len(lines):.0f} chars each) with "
          f"{len(secrets)} secrets loaded: {took * 1000:.0f} ms ({took / len(lines) * 1e6:.1f} us a line; key "
          f"shapes alone {base * 1000:.0f} ms); index built in {load * 1000:.0f} ms; leaks {leaks}")


if __name__ == "__main__":
    main()
