"""ns per call of crossfade's hot path against a direct call, the bare hash, and peer flag SDKs, in one run.

    pip install -e '.[bench]' && python benchmarks/hot_path.py [--calls 200000] [--repeat 5] [--json]

Every figure is the best of `--repeat` timed loops over the same 10,000 keys, less the cost of an empty
loop measured in the same run, so the numbers are the work per call. Ratios are against baselines taken
in the same run: `decide` against the bare murmur3 hash of `"{salt}:{key}"` (called the way `decide` is,
through one Python function), `run` against a direct call of the same function it wraps.
All peers evaluate the same sticky 25% rollout locally (see benchmarks/peers.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import mmh3

sys.path.insert(0, str(Path(__file__).resolve().parent))

import crossfade  # noqa: E402
from peers import PEERS, laboratory_run  # noqa: E402

KEYS = [f"user-{i}" for i in range(10_000)]


def _loop(fn: Callable[[str], object], calls: int) -> float:
    keys = KEYS
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

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
