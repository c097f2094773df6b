"""keywatch: health, budgets and rotation for LLM provider API keys."""

from importlib.metadata import PackageNotFoundError, version

# First: it loads structlog without the extras keywatch never uses (logging.without_modules).
from keywatch import logging as _logging  # noqa: F401

try:
    __version__ = version("keywatch")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+src"

# Every provider's key shapes reach masking and redaction before anything masks a secret.
from keywatch.providers import registry as _providers  # noqa: F401
