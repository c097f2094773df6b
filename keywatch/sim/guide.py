"""What `keywatch sim` prints once the simulator listens: each provider's base URL and the control API."""

from __future__ import annotations

from aiohttp import web

# (provider as keywatch names it, the setting to point at the simulator, the path under the simulator's URL)
BASE_URLS: tuple[tuple[str, str, str], ...] = (
    ("openai", "base_url", "/openai/v1"),
    ("openai_compatible", "base_url", "/openai/v1"),
    ("anthropic", "base_url (key and account)", "/anthropic"),
    ("openrouter", "base_url (key and account)", "/openrouter/api/v1"),
    ("deepseek", "base_url", "/deepseek"),
    ("moonshot", "base_url", "/moonshot/v1"),
    ("azure_openai", "endpoint of the key", "/azure/<resource>"),
    ("azure_openai", "base_url of the account (ARM)", "/azure/arm"),
    ("aws_bedrock", "base_url of the key", "/aws/bedrock"),
    ("aws_bedrock", "endpoint_url of the account (IAM)", "/aws/iam"),
    ("aws_iam", "endpoint_url of the key (STS)", "/aws/sts"),
    ("aws_iam", "leaks.aws_health_endpoint_url (AWS Health)", "/aws-health"),
    ("github", "leaks.github.api_url (secret scanning alerts)", "/github"),
)


def control_routes(app: web.Application) -> list[tuple[str, str]]:
    """(methods, path) of every `/_sim/` route the app serves, in the order they were added."""
    found: dict[str, list[str]] = {}
    for route in app.router.routes():
        resource = route.resource
        if route.method == "HEAD" or resource is None or not resource.canonical.startswith("/_sim/"):
            continue
        found.setdefault(resource.canonical, []).append(route.method)
    return [(", ".join(methods), path) for path, methods in found.items()]


def guide(url: str, app: web.Application) -> str:
    width = max(len(p) for p, _, _ in BASE_URLS)
    lines = [f"keywatch-sim listening on {url}", "", "Base URLs (set in the key or account of your config):"]
    lines += [f"  {provider:<{width}}  {url}{path}    ({setting})" for provider, setting, path in BASE_URLS]
    lines += ["", "Control API (JSON; see docs/simulator.md):"]
    lines += [f"  {methods:<18} {url}{path}" for methods, path in control_routes(app)]
    lines += [
        "",
        "Add a key, e.g.:",
        f"  curl -s -X POST {url}/_sim/keys -d '{{\"secret\": \"sk-proj-simulated0000000000000000GDYA\", "
        '"provider": "openai", "behaviour": "healthy"}\'',
        "Stop with Ctrl-C.",
    ]
    return "\n".join(lines)
