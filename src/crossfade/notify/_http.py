"""One JSON POST over HTTP(S) with the standard library, for the channels that speak HTTP."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Mapping

from crossfade.notify import DeliveryError


def post(url: str, body: bytes, headers: Mapping[str, str], *, timeout: float) -> bytes:
    """POST `body`; the response's body on a 2xx answer, else `DeliveryError` saying what the receiver said."""
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:200].decode(errors="replace").strip()
        raise DeliveryError(f"{_where(url)} answered {exc.code}" + (f": {detail}" if detail else "")) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DeliveryError(f"{_where(url)} unreachable: {reason}") from None


def _where(url: str) -> str:
    # Never the path or query: an incoming-webhook URL carries its secret there.
    parts = urllib.request.urlparse(url)
    return f"{parts.scheme}://{parts.netloc}"
