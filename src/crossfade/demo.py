"""`crossfade demo`: a bundled migration walked stage by stage by hand, on synthetic legacy and candidate services."""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from crossfade.events import verify
from crossfade.sdk import Client
from crossfade.spec import format_percent, load_spec

SPEC = """\
name: demo-pricing
description: Move cart pricing from the rules engine to the new pricing service
owner: payments-team
key: customer id
stages:
  - {name: canary-1, traffic: 1%}
  - {name: canary-10, traffic: 10%}
  - {name: rollout-50, traffic: 50%}
  - {name: complete, traffic: 100%}
fallback: {on_error: true, timeout: 50ms}
allow: [qa-robot]
"""


def legacy_price(cart: dict[str, Any]) -> float:
    """The rules engine: slow-ish and steady."""
    time.sleep(random.lognormvariate(-7.0, 0.3))  # about 0.9 ms
    return round(sum(cart["items"]) * 1.2, 2)


def candidate_price(cart: dict[str, Any]) -> float:
    """The new service: faster, but 3% of its calls fail and 0.5% hang past the timeout."""
    roll = random.random()
    if roll < 0.005:
        time.sleep(0.2)
    elif roll < 0.035:
        raise ConnectionError("pricing-service: 503")
    time.sleep(random.lognormvariate(-7.4, 0.3))  # about 0.6 ms
    return round(sum(cart["items"]) * 1.2, 2)


def run_demo(console: Console, *, calls_per_stage: int = 400, keep: bool = False) -> int:
    """Apply the bundled spec, start it, send traffic and promote stage by stage; returns an exit code."""
    workdir = Path(tempfile.mkdtemp(prefix="crossfade-demo-"))
    url = f"sqlite:///{workdir / 'demo.db'}"
    spec = load_spec(SPEC, source_name="demo-pricing.yaml")
    console.print(f"[bold]crossfade demo[/bold]: {spec.description}")
    console.print(f"backend {url}")
    console.print("every call: [cyan]mig.run(customer_id, legacy_price, candidate_price, cart)[/cyan]; "
                  "the candidate fails 3% of calls and hangs on 0.5%, and each failure falls back to legacy\n")
    with Client(url, refresh=3600) as cf:
        cf.apply(spec, actor="demo")
        mig = cf.migration(spec.name)
        mig.start("demo: begin at the first canary", actor="demo")
        seen_errors = 0
        for index, stage in enumerate(spec.stages):
            if index:
                mig.promote(f"demo: {spec.stages[index - 1].name} looked healthy", actor="demo")
            seen_errors += _traffic(mig.run, calls_per_stage)
            cf.flush(everything=True)
            _show_stage(console, cf, spec.name, stage.name, format_percent(stage.traffic))
        state = mig.state()
        events = mig.history()
        problem = verify(events, head=(state.seq, state.head))
        console.print(f"\n[bold]{state.name} is {state.status}[/bold] after {len(spec.stages)} stages; "
                      f"exceptions seen by callers: {seen_errors}")
        for event in events:
            console.print(f"  #{event.seq} {event.type:<10} by {event.actor}: {event.reason}")
        console.print("audit log: " + ("[green]intact[/green]" if problem is None else f"[red]{problem}[/red]")
                      + f" ({len(events)} events, hash-chained)")
        console.print("stages were moved by hand here; `crossfade promote`, `pause`, `rollback` do the same "
                      "from a shell")
    if keep:
        console.print(f"\nkept: crossfade status --url {url}   |   crossfade history {spec.name} --url {url}")
    else:
        for path in workdir.iterdir():
            path.unlink()
        workdir.rmdir()
    return 0 if problem is None and seen_errors == 0 else 1


def _traffic(run: Callable[..., float], calls: int) -> int:
    """Send calls from 200 customers through `run`; returns how many exceptions reached the caller."""
    errors = 0
    for i in range(calls):
        customer = "qa-robot" if i % 97 == 0 else f"customer-{random.randrange(200)}"
        cart = {"items": [random.randrange(1, 50) for _ in range(3)]}
        try:
            run(customer, legacy_price, candidate_price, cart)
        except Exception:
            errors += 1
    return errors


def _show_stage(console: Console, cf: Client, name: str, stage: str, traffic: str) -> None:
    from crossfade.telemetry import merge_windows

    cells = merge_windows(cf.backend().windows(name, stage=stage))
    table = Table(title=f"stage {stage}: candidate traffic {traffic}", title_justify="left", box=None)
    for column in ("arm", "calls", "errors", "fallbacks", "timeouts", "p50", "p95"):
        table.add_column(column, justify="left" if column == "arm" else "right")
    for arm, cell in sorted(cells.items()):
        table.add_row(arm, str(cell.calls), str(cell.errors), str(cell.fallbacks), str(cell.timeouts),
                      f"{cell.latency.quantile(0.5) * 1000:.2f}ms", f"{cell.latency.quantile(0.95) * 1000:.2f}ms")
    console.print(table)
