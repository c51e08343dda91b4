"""`crossfade proxy`: the HTTP strangler, routing and mirroring between a legacy and a candidate upstream.

For services no one can change: the proxy stands in front of both, routes each request by a sticky key
through the same `Migration` handle the SDK uses (so routing, fallback, shadow comparison, noise cancellation
and telemetry are the SDK's own), and needs `crossfade[proxy]` (uvicorn, aiohttp).
"""

from crossfade.proxy.app import KeySource, Proxy, ProxySettings, UpstreamResponse

__all__ = ["KeySource", "Proxy", "ProxySettings", "UpstreamResponse"]
