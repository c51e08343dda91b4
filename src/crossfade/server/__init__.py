"""The control plane: an HTTP API with tokens and roles, the SDK's routing feed, a dashboard and /metrics.

Importing this package loads the web stack (`pip install 'crossfade[server]'`); `import crossfade` never does.
"""

from crossfade.server.app import create_app
from crossfade.server.run import Limits, serve, serve_in_background

__all__ = ["Limits", "create_app", "serve", "serve_in_background"]
