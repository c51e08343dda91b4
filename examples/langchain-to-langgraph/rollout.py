"""Replace the support assistant's LCEL chain by a LangGraph graph, judged by crossfade's controller.

    python rollout.py DIR [healthy|wrong|regression] [RUNS]     (creates DIR/crossfade.db)

The assistant's four call sites go through one migration: `mig.run` (sync), `mig.arun` (async) and
`mig.stream` / `mig.astream` (streaming). Users are the sticky keys. `crossfade run-controller` runs in its own
process, as in production, and moves the migration stage by stage, or rolls it back. With RUNS > 1 the same
rollout runs that many times side by side (one migration each), to show how often it ends the same way.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import crossfade
import crossfade.compare
import yaml

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import assistant  # noqa: E402

ENDED = ("completed", "rolled_back", "aborted", "paused")


def spec(name: str) -> dict[str, Any]:
    """The spec of migration.yaml under another name (one per run)."""
    data = yaml.safe_load((HERE / "migration.yaml").read_text())
    return {**data, "name": name}


def main(directory: Path, candidate: str = "healthy", runs: int = 1, *, rate: float = 120.0,
         deadline: float = 90.0, stream: bool = True, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Roll the graph out `runs` times side by side; each run's outcome, and what was recorded.

    Users arrive at `rate` questions a second in all (shared by the runs still going): a service that is not
    saturated, so latency is the assistant's and not the queue's. `stream=False` leaves the two streaming call
    sites out (a third of the calls each way then).
    """
    directory.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{directory / 'crossfade.db'}"
    cf = crossfade.connect(url, refresh=0.05, window=0.5)
    chain = assistant.Chain()
    graph = assistant.Graph(None if candidate == "healthy" else candidate)
    names = [f"assistant-langgraph-{i + 1}" for i in range(runs)] if runs > 1 else ["assistant-langgraph"]
    handles = {}
    for name in names:
        cf.apply(spec(name))
        # Answers are scored 0..1 on their text (crossfade.compare.text), never compared for equality.
        handles[name] = cf.migration(name, cost=assistant.tokens, compare=crossfade.compare.text(),
                                     clean=assistant.text_of)
    controller = _controller(url, names, directory / "controller.log")
    try:
        for name in names:
            handles[name].start(f"{candidate} LangGraph candidate")
        outcome = asyncio.run(_traffic(cf, handles, chain, graph, rate, deadline, stream))
    finally:
        controller.terminate()
        controller.wait(timeout=30)
        cf.close()
    ends = Counter(o["status"] for o in outcome.values())
    for name, o in outcome.items():
        say(f"{name}: {o['status']} at {o['stage']} after {o['calls']} calls"
            + (f": {o['reason']}" if o["status"] != "completed" else ""))
    say(f"{candidate}: " + ", ".join(f"{n} {s}" for s, n in sorted(ends.items())) + f" of {runs}")
    return {"runs": outcome, "ends": dict(ends)}


def _controller(url: str, names: list[str], log: Path) -> subprocess.Popen[bytes]:
    """`crossfade run-controller`, in its own process as in production; it looks every 50 ms."""
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "crossfade", "run-controller", *names, "--url", url,
                                 "--poll", "0.05"], stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy())


async def _traffic(cf: crossfade.Client, handles: dict[str, crossfade.Migration], chain: assistant.Chain,
                   graph: assistant.Graph, rate: float, deadline: float, stream: bool) -> dict[str, dict[str, Any]]:
    """Users ask questions through the call sites of every running migration until each has ended.

    The sync call site runs on a pool of threads, as in a threaded web server; the async one on the loop.
    """
    outcome: dict[str, dict[str, Any]] = {}
    calls: Counter[str] = Counter()
    stage: dict[str, str] = {}
    loop = asyncio.get_running_loop()
    until = time.monotonic() + deadline
    with concurrent.futures.ThreadPoolExecutor(16) as threads:
        while len(outcome) < len(handles) and time.monotonic() < until:
            started = time.monotonic()
            work = []
            for name, mig in handles.items():
                if name in outcome:
                    continue
                for i in random.sample(range(1000), 6):
                    user, question = assistant.user_of(i), random.choice(assistant.QUESTIONS)
                    site = i % 6 if stream else i % 3
                    if site in (0, 1):  # the sync call site, on the server's threads
                        work.append(loop.run_in_executor(threads, mig.run, user, chain.answer, graph.answer,
                                                         question))
                    elif site == 2:  # the async call site
                        work.append(mig.arun(user, chain.aanswer, graph.aanswer, question))
                    elif site == 3:  # the streaming call site, read to the end by a sync server
                        work.append(loop.run_in_executor(threads, _read, mig, user, chain, graph, question))
                    else:  # the async streaming call site
                        work.append(_aread(mig, user, chain, graph, question))
                calls[name] += 6
            answers = await asyncio.gather(*work)
            assert all(a["answer"] if isinstance(a, dict) else a for a in answers), "every user got an answer"
            await asyncio.sleep(max(0.0, started + len(work) / rate - time.monotonic()))
            for state in cf.migrations():
                if state.name not in handles or state.name in outcome:
                    continue
                if state.stage:
                    stage[state.name] = state.stage
                if state.status in ENDED:
                    outcome[state.name] = {"status": state.status, "stage": stage.get(state.name),
                                           "reason": state.reason, "calls": calls[state.name],
                                           "failed": _failed_gates(handles[state.name])}
    for name in handles:
        if name not in outcome:
            state = handles[name].state()
            outcome[name] = {"status": f"unfinished ({state.status})", "stage": state.stage, "reason": state.reason,
                             "calls": calls[name]}
    cf.flush(everything=True)
    for name, mig in handles.items():  # tokens per answer, by arm: what the cost gate judged
        windows = mig.windows()
        outcome[name]["tokens"] = {
            arm: sum(w.cell.cost_sum for w in windows if w.arm == arm)
            / max(1, sum(w.cell.costed for w in windows if w.arm == arm)) for arm in ("legacy", "candidate")}
    await cf.aclose()
    return outcome


def _read(mig: crossfade.Migration, user: str, chain: assistant.Chain, graph: assistant.Graph,
          question: str) -> str:
    """A sync server relaying a streamed answer chunk by chunk (here: to a string)."""
    return "".join(mig.stream(user, chain.stream, graph.stream, question))


async def _aread(mig: crossfade.Migration, user: str, chain: assistant.Chain, graph: assistant.Graph,
                 question: str) -> str:
    """An async server relaying a streamed answer chunk by chunk."""
    return "".join([chunk async for chunk in mig.astream(user, chain.astream, graph.astream, question)])


def _failed_gates(mig: crossfade.Migration) -> list[str]:
    """The gates the last verdict failed (empty for a migration that completed)."""
    verdicts = [e for e in mig.history() if e.type == "verdict"]
    return [g["gate"] for g in verdicts[-1].payload.get("gates", []) if g["verdict"] == "FAIL"] if verdicts else []


if __name__ == "__main__":
    main(Path(sys.argv[1]), *(sys.argv[2:3] or ["healthy"]), *([int(sys.argv[3])] if len(sys.argv) > 3 else []))
