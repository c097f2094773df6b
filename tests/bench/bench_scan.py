"""Benchmark: `keywatch scan` against detect-secrets on the same corpus, throughput and recall side by side.
Not part of the test suite; it prints its figures. Run:

    .venv/bin/python tests/bench/bench_scan.py [--managed 10000] [--files 600] [--lines 250]

Generates the planted corpus of tests/leaks_corpus.py (managed secrets of eight formats in text, JSON,
YAML, .env, logs and minified JS; one sample of each provider shape), loads the `--managed` secrets into
keywatch's matcher (a config of that many keys is what `keywatch scan -c` loads), scans the corpus with
keywatch and with detect-secrets (its default plugins, one process, the files one after the other), and
prints MB/s and recall for both. Recall: planted managed secrets reported (keywatch: by fingerprint at
their file and line; detect-secrets: a reported value that is the secret or holds it). The target is
keywatch at least as fast per MB as detect-secrets, with 10,000 managed secrets loaded. A clean corpus of
the same size is scanned with 10,000 and with 100 managed secrets loaded: the cost does not grow with the
number of keys.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from keywatch.domain import fingerprint
from keywatch.leaks.scanner import Managed, Scanner, SecretMatcher, walk
from tests import leaks_corpus


def keywatch_run(corpus: leaks_corpus.Corpus, secrets: dict[str, Managed]) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    matcher = SecretMatcher(secrets)
    built = time.perf_counter() - t0
    scanner = Scanner(matcher)
    t0 = time.perf_counter()
    report = scanner.scan_paths([corpus.root])
    elapsed = time.perf_counter() - t0
    found = {(f.fingerprint, str(Path(f.path).relative_to(corpus.root)), f.line) for f in report.findings}
    hits = sum(1 for p in corpus.planted if (fingerprint(p.secret), p.path, p.line) in found)
    return elapsed, built, hits


def detect_secrets_run(corpus: leaks_corpus.Corpus) -> tuple[float, int]:
    from detect_secrets import SecretsCollection
    from detect_secrets.settings import default_settings

    collection = SecretsCollection()
    files = [str(p) for p in walk(corpus.root)]
    t0 = time.perf_counter()
    with default_settings():
        for f in files:
            collection.scan_file(f)
    elapsed = time.perf_counter() - t0
    values = [s.secret_value for _, s in collection if s.secret_value]
    by_value = set(values)
    long_values = [v for v in by_value if len(v) >= 16]
    hits = 0
    for p in corpus.planted:
        if p.secret in by_value or any(p.secret in v or v in p.secret for v in long_values):
            hits += 1
    return elapsed, hits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--managed", type=int, default=10_000, help="managed secrets loaded and planted")
    ap.add_argument("--files", type=int, default=600)
    ap.add_argument("--lines", type=int, default=250, help="filler lines per file")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        corpus = leaks_corpus.build(
            Path(tmp) / "corpus", managed=args.managed, files=args.files, lines_per_file=args.lines, git_history=False
        )
        mb = corpus.bytes / 1e6
        print(
            f"corpus: {args.files} files, {mb:.1f} MB, {len(corpus.planted)} managed secrets planted, "
            f"{len(corpus.samples)} provider samples (generated in {time.perf_counter() - t0:.1f} s)"
        )
        secrets = {s: Managed(n, p) for n, p, s, _ in corpus.keys}
        kw_s, kw_build, kw_hits = keywatch_run(corpus, secrets)
        kw0_s, _, _ = keywatch_run(corpus, {})
        ds_s, ds_hits = detect_secrets_run(corpus)
        clean = leaks_corpus.build(
            Path(tmp) / "clean",
            managed=args.managed,
            files=args.files,
            lines_per_file=args.lines,
            git_history=False,
            clean=True,
        )
        clean_mb = clean.bytes / 1e6
        clean_many, _, _ = keywatch_run(clean, secrets)
        few = dict(list(secrets.items())[:100])
        clean_few, _, _ = keywatch_run(clean, few)
    n = len(corpus.planted)
    rows = [
        (f"keywatch ({len(secrets)} managed loaded)", kw_s, kw_hits),
        ("keywatch (no managed key loaded)", kw0_s, None),
        ("detect-secrets 1.5 (default plugins)", ds_s, ds_hits),
    ]
    print(f"{'scanner':<40} {'seconds':>8} {'MB/s':>8} {'recall':>8}")
    for name, secs, hits in rows:
        recall = f"{100 * hits / n:.1f}%" if hits is not None else "-"
        print(f"{name:<40} {secs:>8.2f} {mb / secs:>8.2f} {recall:>8}")
    print(f"automaton for {len(secrets)} secrets built in {kw_build * 1000:.0f} ms")
    print(
        f"clean corpus ({clean_mb:.1f} MB, nothing to report): {clean_mb / clean_many:.2f} MB/s with "
        f"{len(secrets)} managed secrets loaded, {clean_mb / clean_few:.2f} MB/s with {len(few)}"
    )
    ratio = (mb / kw_s) / (mb / ds_s)
    print(f"keywatch / detect-secrets throughput: {ratio:.1f}x (floor 1.0x: {'met' if ratio >= 1 else 'NOT met'})")


if __name__ == "__main__":
    main()
