"""The capability matrix comes from the providers' ProviderInfo, matches the adapters, covers every provider,
and docs/providers.md shows it as is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from keywatch.providers import matrix, registry
from keywatch.providers.base import Capability, ProviderAdapter

PAGE = Path(__file__).resolve().parents[2] / "docs" / "providers.md"
METHODS = {
    Capability.METADATA: "metadata",
    Capability.DISABLE: "disable",
    Capability.ENABLE: "enable",
    Capability.CREATE: "create",
    Capability.REVOKE: "revoke",
}


def test_every_registered_provider_has_a_row_with_its_title():
    rendered = matrix.render(matrix.rows())
    for name in registry.names():
        assert f"{registry.info(name).title} (`{name}`) |" in rendered


def test_the_matrix_and_the_capability_check_import_no_adapter():
    """Rendering the matrix and validating policies read ProviderInfo only: the same on a machine without
    boto3 or the Azure SDK."""
    code = (
        "import sys\n"
        "from keywatch.providers import matrix, registry\n"
        "from keywatch.engine import capabilities\n"
        "matrix.render(matrix.rows()); [capabilities.provider_capabilities(n) for n in registry.names()]\n"
        "loaded = [m for m in sys.modules if m.startswith(('boto3', 'azure', 'keywatch.providers.aws',"
        " 'keywatch.providers.azure_openai', 'keywatch.providers.openai'))]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_adapter_class_carries_its_provider_info():
    for name in registry.names():
        try:
            cls = registry.adapter_class(name)
        except ImportError:
            continue
        info = registry.info(name)
        assert (cls.capabilities, cls.notes, cls.least_privilege) == (info.capabilities, info.notes,
                                                                      info.least_privilege)


@pytest.mark.parametrize("name", registry.names())
def test_what_an_adapter_declares_it_implements_and_what_it_lacks_it_explains(name):
    try:
        cls = registry.adapter_class(name)
    except ImportError as exc:
        pytest.skip(f"adapter {name} cannot be imported here: {exc}")
    for capability, method in METHODS.items():
        if capability in cls.capabilities:
            assert getattr(cls, method, None) is not getattr(ProviderAdapter, method, None), (
                f"{name} declares {capability} but does not implement {method}()"
            )
    for capability in Capability:
        if capability not in cls.capabilities:
            assert cls.notes.get(capability.value), f"{name} lacks {capability} and its notes do not say why"
    assert cls.least_privilege, f"{name} does not say what its management credential needs"


def test_the_section_is_replaced_between_the_markers_and_nothing_else():
    text = f"# Title\n\nbefore\n\n{matrix.START}\nold table\n{matrix.END}\n\nafter\n"
    out = matrix.replace_section(text, "new table\n")
    assert out == f"# Title\n\nbefore\n\n{matrix.START}\nnew table\n{matrix.END}\n\nafter\n"
    assert matrix.section(out) == "new table\n"
    assert matrix.section("no markers here") is None
    assert matrix.section(matrix.replace_section("", "t\n")) == "t\n"


def test_the_providers_page_shows_the_matrix_the_adapters_declare():
    current = matrix.section(PAGE.read_text(encoding="utf-8"))
    assert current is not None, f"{PAGE.name} has no capability matrix between {matrix.START} and {matrix.END}"
    assert current == matrix.render(matrix.rows()), (
        "docs/providers.md capability matrix is stale: "
        "run `python -m keywatch.providers.matrix --write docs/providers.md`"
    )
