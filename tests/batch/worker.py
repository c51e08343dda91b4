"""A batch run in its own process, for the crash tests: `python worker.py URL LOG SEED` (killed with -9)."""

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
    rng = random.Random(seed)
    lock = threading.Lock()

    def transform(key: str, data: bytes) -> bytes:
        with lock:
            fault = rng.random() < 0.05
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
