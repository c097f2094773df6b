"""The TLS context of the daemon's outbound HTTPS clients (the probe pool, the alert sinks): one, shared.

Each context built loads the system's CA certificates: 1 to 2.5 MB of memory. aiohttp loads one when it is
imported (its verified default, the standard library's `create_default_context`, which honours
SSL_CERT_FILE and SSL_CERT_DIR); keywatch uses that one instead of loading the certificates again for each
client. An SSLContext is safe to share between clients and threads, and nothing changes it once made.
"""

from __future__ import annotations

import functools
import ssl


@functools.cache
def verified_context() -> ssl.SSLContext:
    from aiohttp import connector

    ctx = getattr(connector, "_SSL_CONTEXT_VERIFIED", None)  # not public: checked, with a fallback
    if isinstance(ctx, ssl.SSLContext) and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname:
        return ctx
    return ssl.create_default_context()
