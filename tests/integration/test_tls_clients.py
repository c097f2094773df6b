"""The daemon's outbound HTTPS: one verified TLS context for the probe pool and the alert sinks, the system's
trust store (or SSL_CERT_FILE), and no sinks' pool at all while alerts go to the log only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.integration.test_secret_stores import make_tls

# A TLS server with a certificate from a CA made for the test; the probe pool (its lean path and its SDK
# transport) and the sinks' pool each make one request to it. Prints one word per request: its status, or
# the kind of failure.
CLIENTS = r"""
import asyncio, ssl, sys
from aiohttp import web
from keywatch.notify.registry import SinkClient
from keywatch.providers.clients import make_http_client

async def main(cert, key):
    app = web.Application()
    app.router.add_get("/v1/models", lambda r: web.json_response({"data": []}))
    app.router.add_post("/hook", lambda r: web.Response(status=204))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server)
    await site.start()
    base = f"https://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    probes, sinks = make_http_client(concurrency=2, timeout=5), SinkClient()
    out = []
    for ask in (lambda: probes.keywatch_lean.get(f"{base}/v1/models", headers={}),
                lambda: probes.get(f"{base}/v1/models"),
                lambda: sinks.post(f"{base}/hook", content=b"{}")):
        try:
            r = await ask()
            out.append(str(getattr(r, "status_code", None) or r.status))
        except Exception as exc:
            text = f"{exc!r} {exc.__cause__!r} {exc.__context__!r}"
            out.append("unverified" if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify" in text
                       else type(exc).__name__)
    print(" ".join(out))
    print(probes.keywatch_lean._session().connector._ssl is sinks._client._transport._pool._ssl_context)
    await probes.aclose(); await sinks.aclose(); await runner.cleanup()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def run(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=60,
                          env={**base, "PYTHONPATH": str(Path(__file__).parents[2]), **(env or {})})


def test_probes_and_sinks_verify_certificates_with_one_shared_context(tmp_path: Path) -> None:
    ca, cert, key = make_tls(tmp_path)
    untrusted = run(CLIENTS, str(cert), str(key))
    assert untrusted.stdout.split("\n")[0] == "unverified unverified unverified", untrusted.stderr[-2000:]
    trusted = run(CLIENTS, str(cert), str(key), env={"SSL_CERT_FILE": str(ca)})
    assert trusted.stdout.split() == ["200", "200", "204", "True"], trusted.stderr[-2000:]


DAEMON = r"""
import asyncio, ssl, sys
loads = []
for name in ("load_verify_locations", "load_default_certs"):
    def counted(self, *a, _real=getattr(ssl.SSLContext, name), **k):
        loads.append(1)
        return _real(self, *a, **k)
    setattr(ssl.SSLContext, name, counted)
from keywatch.daemon import Daemon
imported = len(loads)

async def main(cfg):
    d = Daemon(cfg)
    await d.start()
    d._scheduler.pause()
    report = await d.cycle()
    print(d.tracker.snapshot()[report.probed[0]].health, len(loads) - imported,
          sorted(m for m in ("httpcore2", "h11", "anyio") if m in sys.modules))
    d.request_stop()
    await d.shutdown()

asyncio.run(main(sys.argv[1]))
"""


def test_a_daemon_whose_alerts_go_to_the_log_loads_no_certificates_again_and_no_sinks_pool(tmp_path: Path) -> None:
    """A probe of an unreachable provider and its alert, written to the log: the daemon's certificates are the
    ones loaded with aiohttp (not once more per client, 1 to 2.5 MB each), and the sinks' HTTP stack is never
    imported (about 1 MB)."""
    secret = tmp_path / "secret"
    secret.write_text("sk-proj-tls-test-0123456789abcdefghij")
    cfg = tmp_path / "k.toml"
    cfg.write_text(f"""
[daemon]
database = "sqlite:///{tmp_path / 'k.db'}"
listen = "127.0.0.1:0"
log_level = "error"
[probe]
interval = "1h"
jitter = 0
spread = 0
timeout = "2s"
[[keys]]
name = "k"
provider = "openai"
secret = "file:{secret}"
base_url = "https://127.0.0.1:9/v1"
""")
    out = run(DAEMON, str(cfg))
    assert out.stdout.strip().splitlines()[-1:] == ["unreachable 0 []"], out.stdout[-2000:] + out.stderr[-2000:]
