"""keywatch: health, budgets and rotation for LLM provider API keys."""

import sys as _sys
from importlib.metadata import PackageNotFoundError, version

# First: it loads structlog without the extras keywatch never uses (logging.without_modules).
from keywatch import logging as _logging  # noqa: F401

# structlog imports rich (and pygments) at its own import when rich is installed, for tracebacks keywatch
# never renders that way (logging.setup formats them plainly): loaded without them, ~5 MB and 70 modules
# less in every process. Only structlog's import is affected; `import rich` works as before afterwards.
if "structlog" not in _sys.modules and "rich" not in _sys.modules:
    _sys.modules["rich"] = None  # type: ignore[assignment]
    try:
        import structlog as _structlog  # noqa: F401
    finally:
        del _sys.modules["rich"]

try:
    __version__ = version("keywatch")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+src"

# Every provider's key shapes reach masking and redaction before anything masks a secret.
from keywatch.providers import registry as _providers  # noqa: F401
