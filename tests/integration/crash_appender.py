"""A process that appends to the record from four threads until it is killed.

After each append returns (durably committed) it prints ``<seq> <payload>``;
the crash test kills it with SIGKILL and checks that every printed entry
survived. Usage: python crash_appender.py DB_PATH RUN_ID
"""

from __future__ import annotations

import sys
import threading
import time

from gateway.chain.store import ChainStore
from gateway.db import connect
from gateway.run.recorder import Recorder

DEVICE = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"


def main() -> None:
    path, run = sys.argv[1], sys.argv[2]
    recorder = Recorder(lambda: ChainStore(connect(path)), clock_ms=lambda: int(time.time() * 1000))
    out = threading.Lock()

    def work(worker: int) -> None:
        i = 0
        while True:
            payload = f"{run}:{worker}:{i}"
            entry = recorder.append("reading", DEVICE, payload.encode())
            with out:
                sys.stdout.write(f"{entry.seq} {payload}\n")
                sys.stdout.flush()
            i += 1

    threads = [threading.Thread(target=work, args=(w,), daemon=True) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


if __name__ == "__main__":
    main()
