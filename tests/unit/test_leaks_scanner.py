"""`keywatch scan`: every managed secret on a planted corpus (text, JSON, YAML, .env, logs, minified JS, git
history with deleted and changed files) is found at its file and line, every provider key shape is found,
a clean corpus of the same size yields nothing, and no output shows a secret."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keywatch.cli import main
from keywatch.leaks.patterns import MANAGED_RULE_ID, RULES
from keywatch.leaks.scanner import CHUNK, Managed, Scanner, SecretMatcher
from tests import leaks_corpus

# The OASIS SARIF 2.1.0 schema, as published in oasis-tcs/sarif-spec (sarif-2.1/schema/sarif-schema-2.1.0.json,
# commit e0583813964e, 2026-03-01), stored so the test needs no network.
SARIF_SCHEMA = Path(__file__).resolve().parents[1] / "data" / "sarif-schema-2.1.0.json"


def _scan(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["scan", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def dirty(tmp_path_factory: pytest.TempPathFactory) -> leaks_corpus.Corpus:
    return leaks_corpus.build(tmp_path_factory.mktemp("dirty") / "corpus", managed=240, files=48, lines_per_file=120)


def _first_commit(repo: Path) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "rev-list", "--max-parents=0", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_every_planted_secret_and_provider_shape_is_found(
    dirty: leaks_corpus.Corpus, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = dirty.config(tmp_path / "kw.toml")
    code, out, err = _scan(
        [str(dirty.root), str(dirty.root / "repo"), "--git-history", "--json", "-c", str(cfg)], capsys
    )
    assert code == 1
    report = json.loads(out)
    findings = report["findings"]
    for f in findings:
        f["path"] = str(Path(f["path"]).relative_to(dirty.root))
    managed = {(f["fingerprint"], f["path"], f["line"], f["commit"], f["key"]) for f in findings if f["managed"]}
    first = _first_commit(dirty.root / "repo")
    from keywatch.domain import fingerprint

    expected = {(fingerprint(p.secret), p.path, p.line, first if p.commit else None, p.name) for p in dirty.planted}
    assert len(dirty.planted) == 240
    assert {p.path.split("/")[0] for p in dirty.planted} == {*leaks_corpus.KINDS, "repo"}
    assert managed == expected  # recall 100%, each at its file, line and (history) commit
    by_rule = {f["rule"]: (f["path"], f["line"]) for f in findings if not f["managed"]}
    assert by_rule == dirty.samples
    assert set(by_rule) == {r.id for r in RULES}
    assert len(findings) == len(expected) + len(RULES)  # nothing else
    assert all(f["rule"] == MANAGED_RULE_ID for f in findings if f["managed"])
    assert report["scanned"]["blobs"] >= 3
    leaks_corpus.assert_hidden([s for _, _, s, _ in dirty.keys], out + err)


def test_a_clean_corpus_of_the_same_size_yields_nothing(
    dirty: leaks_corpus.Corpus, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clean = leaks_corpus.build(tmp_path / "clean", managed=240, files=48, lines_per_file=120, clean=True)
    assert clean.bytes >= dirty.bytes * 0.9
    cfg = clean.config(tmp_path / "kw.toml")  # the same kind of fleet loaded: only the files differ
    code, out, err = _scan([str(clean.root), str(clean.root / "repo"), "--git-history", "-c", str(cfg)], capsys)
    assert (code, out) == (0, "")
    assert "0 findings" in err


def test_table_and_sarif_show_masked_forms_only(
    dirty: leaks_corpus.Corpus, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = dirty.config(tmp_path / "kw.toml")
    code, table, err = _scan([str(dirty.root), "-c", str(cfg)], capsys)
    assert code == 1
    name, _, secret, _ = dirty.keys[-1]
    from keywatch.domain import mask

    row = next(line for line in table.splitlines() if f" {name} " in line)
    assert mask(secret) in row and MANAGED_RULE_ID in row
    code, sarif_text, _ = _scan(
        [str(dirty.root), str(dirty.root / "repo"), "--git-history", "--sarif", "-c", str(cfg)], capsys
    )
    assert code == 1
    log = json.loads(sarif_text)
    jsonschema.Draft4Validator(json.loads(SARIF_SCHEMA.read_text())).validate(log)
    results = log["runs"][0]["results"]
    assert len(results) == len(dirty.planted) + len(RULES)
    rules = log["runs"][0]["tool"]["driver"]["rules"]
    assert all(rules[r["ruleIndex"]]["id"] == r["ruleId"] for r in results)
    assert {r["level"] for r in results if r["ruleId"] == MANAGED_RULE_ID} == {"error"}
    assert any(r["properties"]["commit"] for r in results)
    leaks_corpus.assert_hidden([s for _, _, s, _ in dirty.keys], table + err + sarif_text)


def test_binary_large_and_missing_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret = "gw_live_" + "Q7x" * 12
    cfg = tmp_path / "kw.toml"
    cfg.write_text(
        '[daemon]\nallow_literal_secrets = true\n[[keys]]\nname = "gw"\nprovider = "openai_compatible"\n'
        f'base_url = "http://127.0.0.1:9/v1"\nsecret = "{secret}"\n'
    )
    files = tmp_path / "files"
    files.mkdir()
    (files / "image.bin").write_bytes(b"\x89PNG\x00\x00" + secret.encode())
    (files / "big.log").write_text(("x" * 99 + "\n") * 3000 + secret + "\n")
    (files / "small.txt").write_text("nothing here\n")
    code, out, err = _scan([str(files), "-c", str(cfg), "--max-size", "100K"], capsys)
    assert (code, out) == (0, "")
    assert f"skipped {files / 'image.bin'}: binary" in err
    assert f"skipped {files / 'big.log'}: larger than 102400 bytes" in err
    code, out, _ = _scan([str(files), "-c", str(cfg), "--json"], capsys)
    assert code == 1 and [f["line"] for f in json.loads(out)["findings"]] == [3001]
    code, _, err = _scan([str(tmp_path / "nope"), "-c", str(cfg)], capsys)
    assert code == 2 and "no such file or directory" in err
    code, _, err = _scan([str(files), "-c", str(tmp_path / "missing.toml")], capsys)
    assert code == 2


def test_secrets_across_chunk_boundaries_are_found_at_their_line_and_column() -> None:
    secrets = {f"kw-{i:02d}-" + "Zq9" * 30: Managed(f"key-{i}", None) for i in range(4)}
    scanner = Scanner(SecretMatcher(secrets))
    names = list(secrets)
    text = bytearray(b"a" * (3 * CHUNK + 500))
    for i in range(0, len(text), 97):
        text[i] = ord("\n")
    spots = [CHUNK - 10, 2 * CHUNK - len(names[1]) // 2, 2 * CHUNK + 300, 3 * CHUNK + 100]
    for s, at in zip(names, spots, strict=True):
        text[at : at + len(s)] = s.encode()
    data = bytes(text)
    pos = 0

    def read(n: int) -> bytes:
        nonlocal pos
        chunk = data[pos : pos + n]
        pos += len(chunk)
        return chunk

    found = scanner.scan_stream(read, "mem")
    assert found is not None
    got = [(f.key, f.line, f.column) for f in found]
    want = []
    for s, at in zip(names, spots, strict=True):
        start = data.index(s.encode())
        assert start == at
        want.append((secrets[s].name, data.count(b"\n", 0, start) + 1, start - (data.rfind(b"\n", 0, start) + 1) + 1))
    assert got == want


def test_the_cost_does_not_depend_on_how_many_keys_are_loaded() -> None:
    """One automaton: loading 10,000 secrets leaves a single pass over the text (no per-key loop)."""
    many = {f"tok_{i:06d}_" + "x" * 20: Managed(f"k{i}", None) for i in range(10_000)}
    matcher = SecretMatcher(many)
    text = "prefix " + "tok_004242_" + "x" * 20 + " suffix"
    assert [(s, o.name) for _, _, s, o in matcher.find(text)] == [("tok_004242_" + "x" * 20, "k4242")]
    assert matcher.count == 10_000


SECRETS = {"kw_" + "Qz7" * 10 + str(i): Managed(f"key-{i}", None) for i in range(3)}


@settings(max_examples=60, deadline=None)
@given(
    pieces=st.lists(
        st.tuples(st.text("ab \n\t{}\"'=:;,.-_x", max_size=3000), st.sampled_from([*SECRETS, ""])), max_size=12
    ),
    sizes=st.lists(st.integers(1, 4096), min_size=1, max_size=40),
)
def test_any_text_read_in_any_sizes_finds_each_secret_at_its_line_and_column(pieces: list, sizes: list) -> None:
    """Reads as a pipe gives them (short, uneven): every planted secret once, at its line and column."""
    text = "".join(filler + secret for filler, secret in pieces)
    data = text.encode()
    pos, calls = 0, 0

    def read(n: int) -> bytes:
        nonlocal pos, calls
        size = min(n, sizes[calls % len(sizes)])
        calls += 1
        chunk = data[pos : pos + size]
        pos += len(chunk)
        return chunk

    found = Scanner(SecretMatcher(SECRETS)).scan_stream(read, "p")
    assert found is not None
    want = []
    at = 0
    for filler, secret in pieces:
        at += len(filler)
        if secret:
            line = text.count("\n", 0, at) + 1
            want.append((SECRETS[secret].name, line, at - (text.rfind("\n", 0, at) + 1) + 1))
        at += len(secret)
    assert [(f.key, f.line, f.column) for f in found] == want


@pytest.mark.parametrize(
    ("section", "where"),
    [
        ('[scan]\npaths = ["relative/dir"]\n', "scan.paths"),
        ('[scan]\npaths = ["/srv"]\ninterval = "10s"\n', "scan.interval"),
    ],
)
def test_a_bad_scan_section_is_refused_naming_the_field(section: str, where: str) -> None:
    from keywatch.settings.loader import ConfigError, parse

    with pytest.raises(ConfigError) as exc:
        parse(section, "kw.toml")
    assert any(p.startswith(where) for p in exc.value.problems), exc.value.problems
    assert parse('[scan]\npaths = ["/srv/app"]\ninterval = "30m"\n').scan.interval == 1800
