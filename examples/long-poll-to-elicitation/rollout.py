"""Move agent messages from long polling to MCP elicitation under load, judged by crossfade's controller.

    python rollout.py DIR [switch|lossy|chaos]      (creates DIR/crossfade.db)

Senders send messages between agents at a steady rate; each goes through one call site:

    await mig.awrite(agent_id, bridge.deliver_long_poll, bridge.deliver_elicitation, message,
                     idempotency_key=message["id"])

keyed by the receiving agent (per-agent keys; the canary agents are allow-listed). A reconciler compares what
each sender was told was delivered with what the agents' inboxes hold, and records a message still missing
after a second as `lost` for the decision that sent it (`mig.record(decision, "lost", 1)`): the `lost > 0`
trigger rolls the migration back at once. `crossfade run-controller` runs in its own process.

- `switch`: the healthy bridge goes from the canary agents to every agent under load: no sender sees an error,
  no message is lost.
- `lossy`: the elicitation path's bug acknowledges 2% of its messages without delivering them; it passes the
  dual-write stages (the long poll still delivers every message) and is rolled back by the trigger at the first
  loss after them, long before 1% of the messages are lost.
- `chaos`: the elicitation path is killed mid-flight during a dual-write stage: its in-flight and later
  deliveries fail, legacy answers for them, the agents' inboxes drop the copies, and nothing is lost.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import yaml

import crossfade

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from bridge import CANARY_AGENTS, ELICIT_TIMEOUT, Agent, Bridge  # noqa: E402

NAME = "bridge-elicitation"
AGENTS = CANARY_AGENTS + [f"agent_{i:03d}" for i in range(37)]
DELIVERY_DEADLINE = 1.0  # seconds after which a message told delivered and not in the inbox is lost
ENDED = ("completed", "rolled_back", "aborted", "paused")


def main(directory: Path, scenario: str = "switch", *, rate: float = 150.0, deadline: float = 90.0,
         say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run one scenario; what the senders saw, what the agents got, and how the migration ended."""
    directory.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{directory / 'crossfade.db'}"
    cf = crossfade.connect(url, refresh=0.05, window=0.2)
    spec = yaml.safe_load((HERE / "bridge.yaml").read_text())
    if scenario == "chaos":
        # Long enough at rollout-5 for the kill to meet deliveries under way, however loaded the machine is.
        next(stage for stage in spec["stages"] if stage["name"] == "rollout-5")["hold"] = "10s"
    cf.apply(spec)
    mig = cf.migration(NAME)
    with open(directory / "controller.log", "wb") as log:
        controller = subprocess.Popen([sys.executable, "-m", "crossfade", "run-controller", NAME, "--url", url,
                                       "--poll", "0.05"], stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        mig.start(f"{scenario}: canary agents on elicitation, every message written both ways")
        result = anyio.run(_run, cf, mig, Bridge(lossy=scenario == "lossy"), scenario, rate, deadline,
                           lambda: controller.poll() is None)
    finally:
        controller.terminate()
        controller.wait(timeout=30)
        cf.close()
    if result["status"] not in ENDED:  # say what the controller last saw, so that a stuck run explains itself
        lines = (directory / "controller.log").read_text(errors="replace").splitlines()
        result["controller"] = "\n".join(lines[-6:]) or f"no output (exit code {controller.returncode})"
    say(f"{scenario}: {result['status']} at {result['stage']}; {result['sent']} messages sent, "
        f"{result['lost']} lost ({result['lost'] / max(result['sent'], 1):.2%}), {result['errors']} sender errors, "
        f"{result['duplicates']} duplicate deliveries dropped by the inboxes"
        + (f"; the elicitation path dropped {result['silently_dropped']}" if scenario == "lossy" else "")
        + (f"; killed at {result['killed_at']} with {result['in_flight_at_kill']} elicitations in flight"
           if scenario == "chaos" else "")
        + (f"; {result['reason']}" if result["status"] != "completed" else "")
        + (f"\nthe controller's last lines:\n{result['controller']}" if "controller" in result else ""))
    return result


async def _run(cf: crossfade.Client, mig: crossfade.Migration, bridge: Bridge, scenario: str, rate: float,
               deadline: float, controller_running: Callable[[], bool]) -> dict[str, Any]:
    agents = {agent_id: Agent(agent_id, bridge) for agent_id in AGENTS}
    sent: list[tuple[dict[str, Any], crossfade.Decision, float]] = []  # told delivered: message, decision, when
    errors: list[BaseException] = []
    lost: set[str] = set()
    stages: list[str] = []
    killed_at: str | None = None
    in_flight_at_kill = 0
    async with anyio.create_task_group() as tasks:
        for agent in agents.values():
            await tasks.start(agent.poll)
            await tasks.start(agent.listen)

        sending: set[int] = set()

        async def send(number: int) -> None:
            to, sender = random.sample(AGENTS, 2)
            message = {"id": f"msg-{number:06d}", "from": sender, "to": to, "content": f"task update {number}"}
            decision = mig.decide(to)
            sending.add(number)
            try:
                await mig.awrite(to, bridge.deliver_long_poll, bridge.deliver_elicitation, message,
                                 idempotency_key=message["id"])
            except Exception as exc:  # what a sender would see: none are expected
                errors.append(exc)
                return
            finally:
                sending.discard(number)
            sent.append((message, decision, time.monotonic()))

        def reconcile(now: float) -> None:
            for message, decision, at in sent:
                if message["id"] in lost or now - at < DELIVERY_DEADLINE:
                    continue
                if message["id"] not in agents[message["to"]].inbox.processed:
                    lost.add(message["id"])
                    mig.record(decision, "lost", 1)

        number = 0
        started = looked = time.monotonic()
        while time.monotonic() - started < deadline:
            tick = time.monotonic()
            burst = max(1, round(rate * 0.05))
            for _ in range(burst):
                number += 1
                tasks.start_soon(send, number)
            await anyio.sleep(max(0.0, tick + burst / rate - time.monotonic()))
            if tick - looked > 0.1:
                looked = tick
                reconcile(time.monotonic())
                state = mig.state()
                if state.stage and (not stages or stages[-1] != state.stage):
                    stages.append(state.stage)
                if state.status in ENDED or not controller_running():
                    break
                if scenario == "chaos" and killed_at is None and state.stage == "rollout-5" and bridge.in_flight:
                    killed_at, in_flight_at_kill = state.stage, bridge.in_flight
                    for agent in agents.values():  # the elicitation manager dies with deliveries in flight
                        agent.kill_elicitation()
        # Every sender gets its answer (a delivery on a dead path ends by its timeout and legacy's answer), the
        # last messages land, and then all of them are counted.
        with anyio.move_on_after(ELICIT_TIMEOUT + 30.0):
            while sending:
                await anyio.sleep(0.05)
        await anyio.sleep(DELIVERY_DEADLINE + 0.5)
        reconcile(time.monotonic() + DELIVERY_DEADLINE)
        bridge.close_listeners()
        tasks.cancel_scope.cancel()
    cf.flush(everything=True)
    state = mig.state()
    return {
        "status": state.status, "stage": stages[-1] if stages else None, "stages": stages,
        "reason": state.reason, "killed_at": killed_at, "in_flight_at_kill": in_flight_at_kill,
        "sent": len(sent) + len(errors), "lost": len(lost), "errors": len(errors),
        "duplicates": sum(a.inbox.duplicates for a in agents.values()),
        "via": {way: sum(a.inbox.via[way] for a in agents.values()) for way in ("long-poll", "elicitation")},
        "silently_dropped": bridge.silently_dropped,
        "stats": cf.stats(),
    }


if __name__ == "__main__":
    main(Path(sys.argv[1]), *(sys.argv[2:3] or ["switch"]))
