"""ns per call of crossfade's hot path against a direct call, the bare hash, and peer flag SDKs, in one run.

    pip install -e '.[bench]' && python benchmarks/hot_path.py [--calls 200000] [--repeat 5] [--json]
    python benchmarks/hot_path.py --instructions [--keep DIR] [--json]     # needs valgrind

With `--instructions` the figures are CPU instructions per call instead of ns, counted by valgrind's callgrind
(the same on every machine and every run, unlike time): the script runs itself under callgrind, marks each
measured loop with a call of `os.getppid` (callgrind dumps a profile part there), runs every loop twice with
different numbers of calls, and divides the difference of the two parts' instructions by the difference of
calls, so startup, warm-up and the markers cancel out. `--keep DIR` keeps the parts for `callgrind_annotate`.

Every figure is the best of `--repeat` timed loops over the same 10,000 keys, less the cost of an empty
loop measured in the same run, so the numbers are the work per call. Ratios are against baselines taken
in the same run: `decide` against the bare murmur3 hash of `"{salt}:{key}"` (called the way `decide` is,
through one Python function), `run` against a direct call of the same function it wraps.
All peers evaluate the same sticky 25% rollout locally (see benchmarks/peers.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import mmh3

sys.path.insert(0, str(Path(__file__).resolve().parent))

import crossfade  # noqa: E402
from peers import PEERS, laboratory_run  # noqa: E402

KEYS = [f"user-{i}" for i in range(10_000)]


def _loop(fn: Callable[[str], object], calls: int, keys: list[str] = KEYS) -> float:
    n = len(keys)
    start = time.perf_counter_ns()
    for i in range(calls):
        fn(keys[i % n])
    return (time.perf_counter_ns() - start) / calls


def _bare_loop(calls: int) -> float:
    keys = KEYS
    n = len(keys)
    start = time.perf_counter_ns()
    for i in range(calls):
        keys[i % n]
    return (time.perf_counter_ns() - start) / calls


def measure(fn: Callable[[str], object], calls: int, repeat: int) -> float:
    """Best-of-`repeat` ns per call of `fn(key)`, loop included."""
    return min(_loop(fn, calls) for _ in range(repeat))


# -- instruction counts ------------------------------------------------------------------------------

_MARKER = "os_getppid"  # the C function behind os.getppid: callgrind dumps a part each time it is entered
_CALLS = (2_000, 12_000)  # each loop runs with both; the difference cancels everything but the calls
_BATCHES = 40


_GROUPS = ("run", "shadow", "arun")


def _callgrind_child(out: str, groups: list[str]) -> None:
    """Under callgrind: every measured loop between two markers; the labels of the parts go to `out`."""
    labels: list[tuple[str | None, int]] = []

    def mark(label: str | None = None, calls: int = 0) -> None:
        os.getppid()
        labels.append((label, calls))

    def measured(label: str, fn: Callable[[str], object], keys: list[str] = KEYS) -> None:
        mark()
        _loop(fn, len(keys), keys)  # warm-up: every key's decision made once, as in a long-running process
        for n in _CALLS:
            mark(label, n)
            _loop(fn, n, keys)

    tmp = tempfile.mkdtemp()
    cf = crossfade.connect(f"sqlite:///{tmp}/bench.db", refresh=3600)
    cf.apply({"name": "bench", "stages": [{"traffic": "25%"}, {"traffic": "100%"}]})
    cf.apply({"name": "legacy", "stages": [{"traffic": "1%"}, {"traffic": "100%"}]})
    cf.apply({"name": "candidate", "stages": [{"traffic": "100%"}]})
    cf.apply({"name": "shadowed", "stages": [{"traffic": "0%", "shadow": "100%"}, {"traffic": "100%"}],
              "shadow": {"threads": 1, "max_pending": 100_000, "timeout": "1h"}})
    mig, legacy, candidate, shadowed = (cf.migration(n) for n in ("bench", "legacy", "candidate", "shadowed"))
    for m in (mig, legacy, candidate, shadowed):
        m.start()
    legacy_keys = [key for key in KEYS if legacy.decide(key).arm == "legacy"]

    def direct(key: str) -> str:
        return key

    def bare_hash(key: str) -> int:
        return mmh3.hash(f"bench:{key}", 0, False)

    for n in _CALLS:
        mark("empty loop", n)
        _bare_loop(n)
    measured("direct call", direct)
    measured("murmur3 hash alone", bare_hash)
    measured("crossfade decide", mig.decide)
    if "run" in groups:
        measured("crossfade run (no shadow)", lambda key: mig.run(key, direct, direct, key))
    if "run" in groups or "shadow" in groups:
        measured("run, legacy serves", lambda key: legacy.run(key, direct, direct, key), legacy_keys)
    if "run" in groups:
        measured("run, candidate serves", lambda key: candidate.run(key, direct, direct, key))

    # The shadow hand-off: the one worker is held busy, so every run waits in the queue and no worker runs
    # while the request path is counted. Batches of 10 and 60 runs, the queue drained outside the counted
    # parts, keep the queue as short as it is in real use (a long one would make the garbage collector's
    # passes, not the hand-off, the cost).
    runner_of = cf._runners.get
    mark()
    for key in legacy_keys:
        shadowed.decide(key)
    for _ in range(_BATCHES if "shadow" in groups else 0):
        for n in (10, 60):
            gate = threading.Event()
            shadowed.run("hold", lambda: None, gate.wait)
            while (runner := runner_of("shadowed")) is None or runner._queue.qsize() or runner.pending != 1:
                time.sleep(0.001)
            mark("run, legacy serves, shadow handed off", n)
            _loop(lambda key: shadowed.run(key, direct, direct, key), n, legacy_keys)
            mark()
            gate.set()
            while runner.pending:
                time.sleep(0.001)

    async def adirect(key: str) -> str:
        return key

    async def asynchronous() -> None:
        for label, fn in (("await of a coroutine", adirect),
                          ("arun, legacy serves", lambda key: legacy.arun(key, adirect, adirect, key)),
                          ("arun, candidate serves", lambda key: candidate.arun(key, adirect, adirect, key))):
            keys = legacy_keys
            size = len(keys)
            mark()
            for key in keys:
                await fn(key)
            for n in _CALLS:
                mark(label, n)
                for i in range(n):
                    await fn(keys[i % size])

    if "arun" in groups:
        asyncio.run(asynchronous())
    mark()
    Path(out, "labels.json").write_text(json.dumps(labels))
    os._exit(0)  # the client's threads and atexit flush would only add parts nobody reads


def instructions(keep: str | None, groups: list[str]) -> dict[str, float]:
    """Instructions per call of each measured loop, counted by callgrind in a child process."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        sys.exit("--instructions needs valgrind (apt-get install valgrind)")
    out = keep or tempfile.mkdtemp()
    Path(out).mkdir(parents=True, exist_ok=True)
    for old in Path(out).glob("callgrind.out*"):
        old.unlink()
    child = subprocess.run(
        [valgrind, "--tool=callgrind", f"--dump-before={_MARKER}", f"--callgrind-out-file={out}/callgrind.out",
         sys.executable, __file__, "--callgrind-child", out, "--only", *groups],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": os.pathsep.join(sys.path[1:])},
    )
    if child.returncode:
        sys.exit(f"the measured child failed under callgrind:\n{child.stderr[-3000:]}")
    labels = json.loads(Path(out, "labels.json").read_text())
    # Per label, the instructions of its parts summed by number of calls: two sizes, as many parts of each.
    counted: dict[str, dict[int, int]] = {}
    for part, (label, calls) in enumerate(labels, start=2):  # part 1 is everything before the first marker
        if label is None:
            continue
        text = Path(out, f"callgrind.out.{part}").read_text()
        total = int(next(line for line in text.splitlines() if line.startswith("totals:")).split()[1])
        sizes = counted.setdefault(label, {})
        sizes[calls] = sizes.get(calls, 0) + total
    if keep is None:
        shutil.rmtree(out, ignore_errors=True)
    per_call = {}
    for label, sizes in counted.items():
        (small, a), (large, b) = sorted(sizes.items())
        parts = sum(1 for name, calls in labels if name == label) // 2
        per_call[label] = (b - a) / ((large - small) * parts)
    return per_call


def report_instructions(args: argparse.Namespace) -> None:
    per_call = instructions(args.keep, args.only or list(_GROUPS))
    empty = per_call.pop("empty loop")
    rows = {label: n - empty for label, n in per_call.items() if "await" not in label and "arun" not in label}
    awaited = per_call.get("await of a coroutine", 0.0)
    rows.update({label: n - awaited for label, n in per_call.items() if "arun" in label})
    hashed = rows["murmur3 hash alone"]
    direct = rows["direct call"]
    figures = {"decide / bare hash": rows["crossfade decide"] / hashed}
    if "crossfade run (no shadow)" in rows:
        figures["run overhead (instructions)"] = rows["crossfade run (no shadow)"] - direct
        figures["run overhead / bare hash"] = figures["run overhead (instructions)"] / hashed
    if "run, legacy serves, shadow handed off" in rows:
        figures["shadow hand-off (instructions)"] = (rows["run, legacy serves, shadow handed off"]
                                                     - rows["run, legacy serves"])
    if "arun, legacy serves" in rows:
        figures["arun candidate-served / legacy-served"] = rows["arun, candidate serves"] / rows["arun, legacy serves"]
    if args.json:
        print(json.dumps({"instructions_per_call": rows, "figures": figures}, indent=2))
        return
    print(f"{'':<40}{'instructions/call':>18}")
    for label, n in rows.items():
        print(f"{label:<40}{n:>18,.0f}")
    print("(loop cost subtracted; arun rows: less an await of a coroutine that returns at once)")
    print()
    print(f"decide / bare hash:                     {figures['decide / bare hash']:.2f}x  (target <= 2x)")
    if "run overhead (instructions)" in figures:
        print(f"run overhead over a direct call:        {figures['run overhead (instructions)']:,.0f} instructions,"
              f" {figures['run overhead / bare hash']:.1f} bare hashes  (target <= 6)")
    if "shadow hand-off (instructions)" in figures:
        print(f"shadow hand-off:                        {figures['shadow hand-off (instructions)']:,.0f} "
              "instructions  (target <= 2,000)")
    if "arun candidate-served / legacy-served" in figures:
        print(f"arun candidate-served / legacy-served:  {figures['arun candidate-served / legacy-served']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--instructions", action="store_true", help="count instructions with callgrind instead")
    parser.add_argument("--keep", metavar="DIR", help="with --instructions: keep callgrind's parts in DIR")
    parser.add_argument("--only", nargs="+", choices=_GROUPS, help="with --instructions: only these rows")
    parser.add_argument("--callgrind-child", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.callgrind_child:
        _callgrind_child(args.callgrind_child, args.only or list(_GROUPS))
        return
    if args.instructions:
        report_instructions(args)
        return

    with tempfile.TemporaryDirectory() as tmp:
        cf = crossfade.connect(f"sqlite:///{tmp}/bench.db", refresh=3600)
        cf.apply({"name": "bench", "stages": [{"traffic": "25%"}, {"traffic": "100%"}]})
        mig = cf.migration("bench")
        mig.start()

        def direct(key: str) -> str:
            return key

        def bare_hash(key: str) -> int:
            return mmh3.hash(f"bench:{key}", 0, False)

        def run(key: str) -> object:
            return mig.run(key, direct, direct, key)

        counted = mig.with_options(metrics=lambda answer: {"delivered": 1})

        def run_with_metric(key: str) -> object:
            return counted.run(key, direct, direct, key)

        def observe_with_metric(key: str) -> None:
            with mig.observe(mig.decide(key)) as obs:
                obs.metric("delivered", 1)

        def observe(key: str) -> None:
            with mig.observe(mig.decide(key)):
                pass

        rows: dict[str, float] = {}
        empty = min(_bare_loop(args.calls) for _ in range(args.repeat))
        rows["direct call"] = measure(direct, args.calls, args.repeat) - empty
        rows["murmur3 hash alone"] = measure(bare_hash, args.calls, args.repeat) - empty
        rows["crossfade decide"] = measure(mig.decide, args.calls, args.repeat) - empty
        rows["crossfade run (no shadow)"] = measure(run, args.calls, args.repeat) - empty
        rows["run + metrics= (1 metric)"] = measure(run_with_metric, args.calls, args.repeat) - empty
        rows["observe"] = measure(observe, args.calls, args.repeat) - empty
        rows["observe + obs.metric"] = measure(observe_with_metric, args.calls, args.repeat) - empty
        peer_calls = max(args.calls // 10, 10_000)
        for name, factory in PEERS.items():
            evaluate = factory()
            if evaluate is not None:
                rows[f"{name} (25% rollout)"] = measure(evaluate, peer_calls, args.repeat) - empty
        lab = laboratory_run()
        if lab is not None:
            rows["laboratory experiment"] = measure(lab, peer_calls, args.repeat) - empty
        cf.close()

    ratios = {
        "decide / bare hash": rows["crossfade decide"] / rows["murmur3 hash alone"],
        "run overhead over a direct call (ns)": rows["crossfade run (no shadow)"] - rows["direct call"],
        "one custom metric via metrics= (ns)": rows["run + metrics= (1 metric)"] - rows["crossfade run (no shadow)"],
        "one custom metric via obs.metric (ns)": rows["observe + obs.metric"] - rows["observe"],
    }
    peers = {k: v for k, v in rows.items() if "rollout" in k or "laboratory" in k}
    if args.json:
        print(json.dumps({"ns_per_call": rows, "ratios": ratios}, indent=2))
        return
    print(f"{'':<32}{'ns/call':>10}")
    for name, ns in rows.items():
        print(f"{name:<32}{ns:>10.0f}")
    print()
    print(f"decide / bare hash:                  {ratios['decide / bare hash']:.2f}x  (target <= 2x)")
    print(f"run overhead over a direct call:     {ratios['run overhead over a direct call (ns)']:.0f} ns"
          "  (target <= 1500 ns)")
    print(f"one custom metric, metrics= on run:  {ratios['one custom metric via metrics= (ns)']:.0f} ns")
    print(f"one custom metric, obs.metric:       {ratios['one custom metric via obs.metric (ns)']:.0f} ns")
    for name, ns in peers.items():
        what = "run" if "laboratory" in name else "decide"
        print(f"{name:<30} is {ns / rows[f'crossfade {what}' + (' (no shadow)' if what == 'run' else '')]:.1f}x "
              f"crossfade {what}")
    if not peers:
        print("(no peers installed: pip install -e '.[bench]')")


if __name__ == "__main__":
    main()
