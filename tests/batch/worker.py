"""A batch run in its own process, for the crash tests: `python worker.py URL LOG SEED [STALL_AFTER MARK]`.

With STALL_AFTER, every transform after that many blocks for ever (writing the file MARK once), so the test
kills the process with -9 at a point it chose, however loaded the machine is."""

from __future__ import annotations

import random
import sys
import threading

import crossfade
from crossfade.batch import Retry, open_store

sys.path.insert(0, __file__.rsplit("/", 3)[0])
from tests.batch.records import log_line, to_v2, valid_v2  # noqa: E402


def main() -> None:
    url, log, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    stall_after = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    mark = sys.argv[5] if len(sys.argv) > 5 else ""
    rng = random.Random(seed)
    lock = threading.Lock()
    done = [0]
    never = threading.Event()

    def transform(key: str, data: bytes) -> bytes:
        with lock:
            fault = rng.random() < 0.05
            done[0] += 1
            stall = stall_after and done[0] > stall_after
            if stall and done[0] == stall_after + 1:
                with open(mark, "w") as marked:
                    marked.write("stalled")
        if stall:
            never.wait()  # until the test kills the process
        if fault:
            raise ConnectionError("transient: connection reset by peer")
        after = to_v2(data)
        log_line(log, key)
        return after

    cf = crossfade.connect(url, refresh=3600)
    report = cf.batch("records-v2", open_store(url, table="records"), transform, validate=valid_v2,
                      concurrency=1000, threads=8, retry={ConnectionError: Retry(attempts=10, base=0.001, cap=0.05)})
    print(report.status, len(report.failed), report.transformed, report.rewritten, flush=True)
    cf.close()


if __name__ == "__main__":
    main()
