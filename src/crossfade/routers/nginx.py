"""NGINX router: a generated server block that splits by a sticky key with `split_clients`, reloaded gracefully.

The router owns one file (`conf`), included in nginx's `http` block. It holds two upstreams, the key
(`header:X-User-Id`, `cookie:uid`), a `split_clients` over `"{salt}:{key}"` (MurmurHash2 ranges taken in
order, so raising the candidate's share only adds keys to it: no key moves back while traffic rises),
maps for the allow and deny keys, a mirror of a share of legacy-served requests to the candidate, and a
verification location that answers the fingerprint of the config nginx is actually running. The file is
written atomically (a temporary file in the same folder, then rename), checked with `nginx -t` and loaded
with `nginx -s reload`: new workers take the new config while old ones finish their requests.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossfade.atomic import replace_file
from crossfade.registry import ConfigProblem, ProviderConfigError
from crossfade.routers import NOT_VERIFIED, VERIFIED, RouterError, Target, Verification

VERIFY_PATH = "/.well-known/crossfade"
_KEY = re.compile(r"^(header|cookie):([A-Za-z0-9_-]+)$")
_ADDRESS = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d+$")


@dataclass(frozen=True, slots=True)
class NginxSettings:
    """Where the generated config goes, what nginx fronts, and how it is tested and reloaded. Immutable."""

    conf: Path
    listen: str
    legacy: tuple[str, ...]
    candidate: tuple[str, ...]
    key: str = "header:X-Crossfade-Key"
    nginx: tuple[str, ...] = ("nginx",)
    timeout: float = 5.0
    pid: Path | None = None


def _ident(name: str) -> str:
    """A migration name as an nginx variable part: letters, digits and underscores only."""
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _key_variable(key: str) -> str:
    kind, name = _KEY.match(key).groups()  # type: ignore[union-attr]  # checked by create()
    return f"$http_{name.lower().replace('-', '_')}" if kind == "header" else f"$cookie_{name}"


def _percent(fraction: float) -> str:
    return f"{fraction * 100:.2f}%"


def _salt(salt: str) -> str:
    """The salt as nginx may read it inside a string: `$`, quotes and braces would be parsed, so such a
    salt is replaced by its digest (still fixed per migration, so buckets stay put)."""
    return salt if re.fullmatch(r"[A-Za-z0-9_.:@/-]*", salt) else hashlib.sha256(salt.encode()).hexdigest()[:16]


def _split(settings: NginxSettings, target: Target) -> list[str]:
    """Upstreams, the sticky split, the pinned keys and the mirror draw: what decides where a request goes."""
    m = _ident(target.migration)
    key = _key_variable(settings.key)
    lines = [f"# crossfade: migration {target.migration}, {target.describe()}. Generated; do not edit."]
    for arm, servers in (("legacy", settings.legacy), ("candidate", settings.candidate)):
        lines += [f"upstream crossfade_{m}_{arm} {{"] + [f"    server {s};" for s in servers] + ["    keepalive 32;", "}"]
    # split_clients hashes the string and takes the ranges in the order written: the candidate's range
    # always starts at 0, so a larger share is a superset of a smaller one.
    lines.append(f'split_clients "{_salt(target.salt)}:{key}" $crossfade_{m}_split {{')
    if 0 < target.candidate < 1:
        lines.append(f"    {_percent(target.candidate)} candidate;")
    lines += ["    * candidate;" if target.candidate >= 1 else "    * legacy;", "}"]
    lines += [f"map {key} $crossfade_{m}_arm {{", f"    default $crossfade_{m}_split;"]
    lines += [f"    {_quote(k)} candidate;" for k in target.allow if k not in target.deny]
    lines += [f"    {_quote(k)} legacy;" for k in target.deny] + ["}"]
    if _mirrors(target):
        lines += [f'split_clients "$request_id" $crossfade_{m}_draw {{', f"    {_percent(target.mirror)} 1;",
                  "    * 0;", "}",
                  f"map $crossfade_{m}_arm$crossfade_{m}_draw $crossfade_{m}_mirror {{", "    legacy1 1;",
                  '    default "";', "}"]
    return lines


def _mirrors(target: Target) -> bool:
    return 0 < target.mirror and target.candidate < 1


def fingerprint(settings: NginxSettings, target: Target) -> str:
    """What nginx's verification location answers once it runs the config for `target`."""
    digest = hashlib.sha256("\n".join(_split(settings, target)).encode()).hexdigest()[:16]
    return f"{digest} {target.candidate:.4f} {target.mirror:.4f}"


def render(settings: NginxSettings, target: Target) -> str:
    """The config file for `target`: the same target always renders the same text."""
    m = _ident(target.migration)
    lines = _split(settings, target) + [
        "server {",
        f"    listen {settings.listen};",
        f"    location = {VERIFY_PATH}/{target.migration} {{",
        "        default_type text/plain;",
        f'        return 200 "{fingerprint(settings, target)}\\n";',
        "    }",
        "    location / {",
        f"        proxy_pass http://crossfade_{m}_$crossfade_{m}_arm;",
        "        proxy_http_version 1.1;",
        '        proxy_set_header Connection "";',
        "        proxy_set_header Host $host;",
        f"        add_header X-Crossfade-Arm $crossfade_{m}_arm always;",
        # Which config answered: lets a client (and the end-to-end test) tell stages apart across a reload.
        f"        add_header X-Crossfade-Stage {_quote(target.stage)} always;",
    ]
    if _mirrors(target):
        lines += [f"        mirror /.crossfade-mirror-{m};", "        mirror_request_body on;"]
    lines += ["    }"]
    if _mirrors(target):
        lines += [
            f"    location = /.crossfade-mirror-{m} {{",
            "        internal;",
            f'        if ($crossfade_{m}_mirror = "") {{ return 204; }}',
            f"        proxy_pass http://crossfade_{m}_candidate$request_uri;",
            "        proxy_http_version 1.1;",
            '        proxy_set_header Connection "";',
            "    }",
        ]
    return "\n".join(lines + ["}", ""])


def _uptime() -> float | None:
    try:
        return float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def stale_workers(pid_file: Path, since: float) -> list[int]:
    """The master's workers that still accept connections and were started before `since` (seconds since boot).

    After a reload, nginx's master starts the new workers and signals the old ones only about 100 ms later;
    until then an old worker still takes new connections with the old config. Linux only (/proc); elsewhere
    the answer is an empty list.
    """
    try:
        master = int(pid_file.read_text().strip())
        ticks = os.sysconf("SC_CLK_TCK")
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    except (OSError, ValueError):
        return []
    stale = []
    for child in children:
        try:
            title = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").strip()
            started = int(Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[19]) / ticks
        except (OSError, ValueError, IndexError):
            continue
        # A worker told to stop renames itself "... is shutting down" and has closed its listening sockets.
        if title.endswith(b"worker process") and started < since:
            stale.append(int(child))
    return stale


class NginxRouter:
    """Writes one migration's nginx config, has nginx test and reload it, and reads back what nginx runs."""

    name = "nginx"

    def __init__(self, settings: NginxSettings) -> None:
        self.settings = settings
        # Seconds since boot when this router last asked for a reload: workers older than that run an old
        # config. None until it reloads (then only the config's fingerprint is checked).
        self._reloaded_at: float | None = None

    def _nginx(self, *args: str) -> None:
        command = [*self.settings.nginx, *args]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=self.settings.timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RouterError(f"could not run {' '.join(command)}: {exc}") from exc
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise RouterError(f"{' '.join(command)} failed ({done.returncode}): {last}")

    def render(self, target: Target) -> str:
        """The config file `sync` writes for `target`."""
        return render(self.settings, target)

    def sync(self, target: Target) -> None:
        """Write the config for `target` (when it differs), test it, and reload nginx gracefully."""
        text = render(self.settings, target)
        path = self.settings.conf
        try:
            old = path.read_text() if path.exists() else None
            if old != text:
                replace_file(path, text.encode())
        except OSError as exc:
            raise RouterError(f"cannot write {path}: {exc}") from exc
        try:
            self._nginx("-t", "-q")
        except RouterError:
            # Leave nginx's running config alone and the file as it was: a broken file would fail the next
            # reload of any other change too.
            if old is None:
                path.unlink(missing_ok=True)
            else:
                replace_file(path, old.encode())
            raise
        self._reloaded_at = _uptime()
        self._nginx("-s", "reload")

    def verify(self, target: Target) -> Verification:
        """Ask nginx's verification location which config it runs, and compare with `target`'s."""
        expected = fingerprint(self.settings, target)
        host, _, port = self.settings.listen.rpartition(":")
        conn = http.client.HTTPConnection(host.strip("[]") or "127.0.0.1", int(port), timeout=self.settings.timeout)
        try:
            conn.request("GET", f"{VERIFY_PATH}/{target.migration}")
            response = conn.getresponse()
            seen = response.read().decode(errors="replace").strip()
        except OSError as exc:
            raise RouterError(f"cannot reach nginx at {self.settings.listen}: {exc}") from exc
        finally:
            conn.close()
        if response.status == 200 and seen == expected:
            if self.settings.pid is not None and self._reloaded_at is not None:
                stale = stale_workers(self.settings.pid, self._reloaded_at)
                if stale:
                    return Verification(NOT_VERIFIED, f"nginx still has {len(stale)} worker(s) from before the "
                                                      f"reload taking connections (pid {', '.join(map(str, stale))})")
            return Verification(VERIFIED, f"nginx serves {target.candidate:.2%} to the candidate")
        shown = seen.split()[1] if response.status == 200 and len(seen.split()) > 1 else f"HTTP {response.status}"
        return Verification(NOT_VERIFIED, f"nginx runs another config (candidate {shown}, expected "
                                          f"{target.candidate:.4f}); a reload may be pending or have failed")

    def remove(self, migration: str) -> None:
        """Delete the generated file and reload, so nginx stops serving the split."""
        if self.settings.conf.exists():
            self.settings.conf.unlink()
            self._nginx("-s", "reload")


def _strings(value: object, path: str, problems: list[ConfigProblem], *, pattern: re.Pattern[str] | None,
             example: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) for v in items):
        problems.append(ConfigProblem(path, f"expected an address or a list of them, e.g. {example}"))
        return ()
    for index, item in enumerate(items):
        if pattern is not None and not pattern.match(item):
            problems.append(ConfigProblem(f"{path}[{index}]" if not isinstance(value, str) else path,
                                          f"{item!r} is not host:port, e.g. {example}"))
    return tuple(items)


def create(config: Mapping[str, Any], path: str) -> NginxRouter:
    """The nginx router from `{conf, listen, legacy, candidate, key?, nginx?, timeout?, pid?}`.

    With `pid` (nginx's pid file), verification also waits until no worker from before the last reload still
    takes connections, so "verified" means every new connection gets the new split.
    """
    problems: list[ConfigProblem] = []
    known = ("conf", "listen", "legacy", "candidate", "key", "nginx", "timeout", "pid")
    for name in config:
        if name not in known:
            problems.append(ConfigProblem(f"{path}.{name}", f"unknown setting; known: {', '.join(known)}"))
    for name in ("conf", "listen", "legacy", "candidate"):
        if name not in config:
            problems.append(ConfigProblem(f"{path}.{name}", "required"))
    conf = config.get("conf", "")
    if "conf" in config and (not isinstance(conf, str) or not conf.endswith(".conf")):
        problems.append(ConfigProblem(f"{path}.conf", "expected the path of a .conf file that nginx.conf includes"))
    listen = config.get("listen", "")
    if "listen" in config and (not isinstance(listen, str) or not _ADDRESS.match(listen)):
        problems.append(ConfigProblem(f"{path}.listen", "expected host:port, e.g. 127.0.0.1:8080"))
    legacy = _strings(config.get("legacy", []), f"{path}.legacy", problems, pattern=_ADDRESS,
                      example="127.0.0.1:8001") if "legacy" in config else ()
    candidate = _strings(config.get("candidate", []), f"{path}.candidate", problems, pattern=_ADDRESS,
                         example="127.0.0.1:8002") if "candidate" in config else ()
    key = config.get("key", "header:X-Crossfade-Key")
    if not isinstance(key, str) or not _KEY.match(key):
        problems.append(ConfigProblem(f"{path}.key", f"expected header:NAME or cookie:NAME, got {key!r}"))
    command = config.get("nginx", ["nginx"])
    nginx = _strings(command, f"{path}.nginx", problems, pattern=None, example="[nginx, -p, /srv/nginx]")
    timeout = config.get("timeout", 5.0)
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
        problems.append(ConfigProblem(f"{path}.timeout", "expected seconds, a positive number"))
    pid = config.get("pid")
    if pid is not None and not isinstance(pid, str):
        problems.append(ConfigProblem(f"{path}.pid", "expected the path of nginx's pid file, e.g. /run/nginx.pid"))
    if problems:
        raise ProviderConfigError(problems)
    return NginxRouter(NginxSettings(Path(conf), listen, legacy, candidate, key, nginx, float(timeout),
                                     Path(pid) if pid else None))
