"""`keywatch scan`: find managed keys and provider key shapes in files and git history (for CI and people).

Output: a table (default), JSON, or SARIF 2.1.0 for GitHub code scanning and other CI tools. Every format
shows a finding's masked form and fingerprint, never the secret.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

from keywatch.cli.common import DEFAULT_CONFIG, EXIT_ATTENTION, EXIT_OK, CliError, add_command, print_table

ATTENTION = "a managed key or a provider key was found"
SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"


def add_commands(sub: Any) -> None:
    p = add_command(
        sub,
        "scan",
        cmd_scan,
        "find keys in files and git history (exit 1 when any is found)",
        attention=ATTENTION,
        config=False,
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="files or directories to scan")
    p.add_argument(
        "-c",
        "--config",
        default=None,
        help=f"config whose keys are matched exactly (default: $KEYWATCH_CONFIG or {DEFAULT_CONFIG} "
        "when it exists; without one, only provider key shapes are looked for)",
    )
    p.add_argument(
        "--git-history",
        action="store_true",
        help="also scan every blob in the git history of each PATH's repository (deleted files too)",
    )
    p.add_argument(
        "--max-size",
        type=_size,
        default=None,
        metavar="BYTES",
        help="skip files and blobs larger than this, with a note (default 50M; suffixes K, M, G)",
    )
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON: findings, skipped files, totals")
    fmt.add_argument("--sarif", action="store_true", help="print a SARIF 2.1.0 log")


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("B")
    mult = units.get(t[-1:], 1)
    try:
        n = int(t[:-1] if t[-1:] in units else t) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1048576, 512K, 50M)") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (must be positive)")
    return n


def load_matcher(config: str | None) -> tuple[Any, list[str]]:
    """The managed secrets of `config` (None: the default config when it exists) as a SecretMatcher."""
    from keywatch.leaks.scanner import SecretMatcher, managed_secrets
    from keywatch.redact import REGISTRY
    from keywatch.settings.loader import load_inventory

    notes: list[str] = []
    path = config
    if path is None:
        path = os.environ.get("KEYWATCH_CONFIG") or DEFAULT_CONFIG
        if not Path(path).exists():
            notes.append(f"no config at {path}: only provider key shapes are looked for (give one with -c)")
            return SecretMatcher({}), notes
    inventory = load_inventory(path, alert_sinks=False)
    REGISTRY.replace(inventory.secrets())
    notes += [f"warning: {w}" for w in inventory.warnings]
    matcher = SecretMatcher(managed_secrets(inventory))
    if matcher.skipped:
        notes.append(
            "secrets shorter than 8 characters are not matched (they would match ordinary text): "
            + ", ".join(matcher.skipped)
        )
    return matcher, notes


def cmd_scan(args: argparse.Namespace) -> int:
    """Look for every key the config manages (exact match, whatever its format) and for provider key
    shapes (OpenAI, Anthropic, AWS, OpenRouter, DeepSeek, Azure OpenAI) in the files under each PATH and,
    with --git-history, in every blob of the history of PATH's git repository, deleted files included.
    Binary files and files over --max-size are skipped with a note. Findings name the file, line and
    commit, the key (managed) or the rule (unmanaged), and show only the masked form and fingerprint."""
    from keywatch.leaks.scanner import DEFAULT_MAX_SIZE, Scanner, ScanReport, toplevel

    paths = [Path(p) for p in args.paths]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise CliError(f"no such file or directory: {', '.join(missing)}")
    matcher, notes = load_matcher(args.config)
    scanner = Scanner(matcher, max_size=args.max_size or DEFAULT_MAX_SIZE)
    report = ScanReport(notes=notes)
    report.merge(scanner.scan_paths(paths))
    if args.git_history:
        done: set[str] = set()
        for p in paths:
            top = toplevel(p)
            if top is None:
                report.notes.append(f"{p}: not in a git repository; history not scanned")
            elif top not in done:
                done.add(top)
                report.merge(scanner.scan_git(p))
    for n in report.notes:
        print(f"keywatch: {n}", file=sys.stderr)
    if args.json:
        print(json.dumps(report_json(report), indent=2))
    elif args.sarif:
        print(json.dumps(sarif(report), indent=2))
    else:
        for s in report.skipped:
            where = f"{s.path}@{s.commit[:12]}" if s.commit else s.path
            print(f"keywatch: skipped {where}: {s.reason}", file=sys.stderr)
        if report.findings:
            print_table(
                ["WHERE", "COMMIT", "KEY", "RULE", "MASKED", "FINGERPRINT"],
                [
                    [
                        f"{f.path}:{f.line}:{f.column}",
                        (f.commit or "-")[:12],
                        f.key or "(unmanaged)",
                        f.rule,
                        f.masked,
                        f.fingerprint,
                    ]
                    for f in report.findings
                ],
                cut_last=False,
            )
        print(summary(report), file=sys.stderr)
    return EXIT_ATTENTION if report.findings else EXIT_OK


def summary(report: Any) -> str:
    managed = sum(1 for f in report.findings if f.managed)
    what = f"{report.files} files" + (f", {report.blobs} git blobs" if report.blobs else "")
    return (
        f"scanned {what} ({report.bytes / 1e6:.1f} MB), skipped {len(report.skipped)}: "
        f"{len(report.findings)} findings ({managed} managed keys)"
    )


def report_json(report: Any) -> dict[str, Any]:
    return {
        "findings": [f.as_dict() for f in report.findings],
        "skipped": [{"path": s.path, "commit": s.commit, "reason": s.reason} for s in report.skipped],
        "scanned": {"files": report.files, "blobs": report.blobs, "bytes": report.bytes},
        "notes": report.notes,
    }


# -- SARIF ------------------------------------------------------------------------------------------------
def _uri(path: str) -> str:
    p = Path(path)
    if p.is_absolute():
        return p.as_uri()
    return quote(p.as_posix())


def sarif(report: Any) -> dict[str, Any]:
    """A SARIF 2.1.0 log: one run, one rule per kind of key, one result per finding (error for a managed
    key, warning for an unmanaged one); partialFingerprints carry the secret's fingerprint so a code
    scanning service keeps one alert per secret and place."""
    from keywatch import __version__
    from keywatch.leaks.patterns import MANAGED_RULE_ID, MANAGED_RULE_TITLE, RULES

    rules = [
        {
            "id": MANAGED_RULE_ID,
            "name": "ManagedKey",
            "shortDescription": {"text": MANAGED_RULE_TITLE},
            "fullDescription": {
                "text": "A key listed in the keywatch configuration appears here: treat it as "
                "exposed (keywatch contains it) and remove it from the file and history."
            },
            "defaultConfiguration": {"level": "error"},
        }
    ]
    rules += [
        {
            "id": r.id,
            "name": "".join(w.capitalize() for w in r.id.split("-")),
            "shortDescription": {"text": r.title},
            "fullDescription": {
                "text": f"Something shaped like a {r.title} that keywatch does not manage: "
                "revoke it at the provider if it is real."
            },
            "defaultConfiguration": {"level": "warning"},
            "properties": {"provider": r.provider},
        }
        for r in RULES
    ]
    index = {r["id"]: i for i, r in enumerate(rules)}
    results = []
    for f in report.findings:
        what = f"managed key {f.key}" if f.managed else f"unmanaged {f.provider} key"
        where = f" in commit {f.commit}" if f.commit else ""
        result: dict[str, Any] = {
            "ruleId": f.rule,
            "ruleIndex": index[f.rule],
            "level": "error" if f.managed else "warning",
            "message": {"text": f"{what} ({f.masked}, {f.fingerprint}){where}"},
            "locations": [
                {
                    "physicalLocation": {
                        "artifactLocation": {"uri": _uri(f.path)},
                        "region": {"startLine": f.line, "startColumn": f.column},
                    }
                }
            ],
            "partialFingerprints": {"secretFingerprint/v1": f"{f.fingerprint}:{f.path}"},
            "properties": {"fingerprint": f.fingerprint, "masked": f.masked, "key": f.key, "commit": f.commit},
        }
        results.append(result)
    notes = [
        {
            "message": {"text": f"skipped {s.path}" + (f" at {s.commit}" if s.commit else "") + f": {s.reason}"},
            "level": "note",
        }
        for s in report.skipped
    ]
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {"driver": {"name": "keywatch", "version": __version__, "rules": rules}},
                "invocations": [{"executionSuccessful": True, "toolExecutionNotifications": notes}],
                "results": results,
            }
        ],
    }
