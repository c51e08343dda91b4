"""Validating manifests against the real CRD schemas: npm's @kubernetes-models packages, run with Node.js."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

PACKAGES = ("@kubernetes-models/istio@2", "@kubernetes-models/gateway-api@2")
CACHE = Path(os.environ.get("CROSSFADE_NPM_CACHE", Path.home() / ".cache" / "crossfade-npm"))
# Each manifest is built into its model class and validated; the answer is one error message (or "") each.
SCRIPT = """
const classes = {
  "networking.istio.io/v1beta1/VirtualService": ["@kubernetes-models/istio/networking.istio.io/v1beta1/VirtualService", "VirtualService"],
  "networking.istio.io/v1beta1/DestinationRule": ["@kubernetes-models/istio/networking.istio.io/v1beta1/DestinationRule", "DestinationRule"],
  "gateway.networking.k8s.io/v1/HTTPRoute": ["@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1/HTTPRoute", "HTTPRoute"],
};
let input = "";
process.stdin.on("data", (d) => { input += d; });
process.stdin.on("end", async () => {
  const answers = [];
  for (const manifest of JSON.parse(input)) {
    const entry = classes[`${manifest.apiVersion}/${manifest.kind}`];
    if (!entry) { answers.push(`no validator for ${manifest.apiVersion} ${manifest.kind}`); continue; }
    const Model = (await import(entry[0]))[entry[1]];
    try { new Model(manifest).validate(); answers.push(""); } catch (e) { answers.push(String(e.message || e)); }
  }
  process.stdout.write(JSON.stringify(answers));
});
"""


def _unreachable(message: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


class CRDValidator:
    """Validates manifests with the installed validators."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        # Per process: several test workers may validate at once; the script must sit beside node_modules.
        self.script = f"validate-{os.getpid()}.mjs"
        (folder / self.script).write_text(SCRIPT)

    def errors(self, manifests: list[dict[str, Any]]) -> list[str]:
        """One message per manifest, empty when it is valid."""
        done = subprocess.run(["node", self.script], cwd=self.folder, input=json.dumps(manifests),
                              capture_output=True, text=True, timeout=120, check=True)
        return json.loads(done.stdout)


def validator() -> CRDValidator:
    """The validators, installed into the cache folder by npm when absent."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        _unreachable("Node.js and npm are needed to validate manifests against the CRD schemas")
    CACHE.mkdir(parents=True, exist_ok=True)
    installed = all((CACHE / "node_modules" / p.rsplit("@", 1)[0]).exists() for p in PACKAGES)
    if not installed:
        if not (CACHE / "package.json").exists():
            (CACHE / "package.json").write_text('{"private": true}\n')
        try:
            subprocess.run(["npm", "install", "--no-audit", "--no-fund", *PACKAGES], cwd=CACHE,
                           capture_output=True, text=True, timeout=600, check=True)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            _unreachable(f"npm could not install {', '.join(PACKAGES)}: {getattr(exc, 'stderr', '') or exc}")
    return CRDValidator(CACHE)
