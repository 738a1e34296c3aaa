#!/usr/bin/env python3
"""In-process send -> receive -> complete round trips per second, from Python and, in the
same run, from C++ doing the same work (the same hub, clock, clients and retry policy,
one message at a time), and the ratio of the two.

    python python/bench.py                   # 16-byte bodies, 20000 round trips, best of 3
    python python/bench.py --size 1024 --n 50000
    python python/bench.py --check 0.25      # exit 1 if Python is below 0.25x the C++ rate

Two configurations: the hub as devicebound.Hub runs it by default (with its timer thread,
whose wake-ups dominate a round trip), and without that thread, where the cost is the
hub and the clients themselves, so the binding's own overhead shows.

The C++ loop is the module devicebound._bench, which the wheel users install does not
carry: install the package from the checkout with it first,

    pip install -C cmake.define.DEVICEBOUND_PYTHON_BENCH=ON .
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# This file sits next to the package's source, which has no native module: import the
# installed package, not python/devicebound.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]

import devicebound as db  # noqa: E402

try:
    from devicebound import _bench  # type: ignore[attr-defined]  # noqa: E402
except ImportError:
    sys.exit("bench.py: devicebound._bench is not installed (a development module, not in the wheel); "
             "run `pip install -C cmake.define.DEVICEBOUND_PYTHON_BENCH=ON .` in the repository")


def python_seconds(n: int, size: int, driver: bool) -> float:
    hub = db.Hub(driver=driver)
    hub.add_device("bench")
    with db.ServiceClient(hub) as service, db.DeviceClient(hub, "bench") as device:
        message = db.Message(b"x" * size, message_id="bench")
        start = time.perf_counter()
        for _ in range(n):
            service.send("bench", message)
            m = device.receive(timeout=10)
            device.complete(m)
        elapsed = time.perf_counter() - start
    hub.close()
    return elapsed


def cpp_seconds(n: int, size: int, driver: bool) -> float:
    return _bench.bench_inproc_round_trips(n, size, driver)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20000, help="round trips per run (default 20000)")
    parser.add_argument("--size", type=int, default=16, help="body bytes (default 16)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the best counts (default 3)")
    parser.add_argument("--check", type=float, default=None, metavar="RATIO",
                        help="exit 1 if the Python rate is below RATIO x the C++ rate")
    args = parser.parse_args()

    worst = float("inf")
    print(f"in-process send -> receive -> complete, {args.size}-byte body, {args.n} messages, best of {args.repeat}")
    for driver in (True, False):
        python_seconds(min(args.n, 2000), args.size, driver)  # warm up: imports, allocations, caches
        cpp_seconds(min(args.n, 2000), args.size, driver)
        py = cpp = float("inf")
        for _ in range(args.repeat):  # interleaved, so both see the same machine load
            py = min(py, python_seconds(args.n, args.size, driver))
            cpp = min(cpp, cpp_seconds(args.n, args.size, driver))
        py_rate, cpp_rate = args.n / py, args.n / cpp
        ratio = py_rate / cpp_rate
        worst = min(worst, ratio)
        print("hub with its timer thread (the default):" if driver else "hub without its timer thread:")
        print(f"  C++    : {cpp_rate:12,.0f} messages/s  ({1e6 / cpp_rate:7.2f} us each)")
        print(f"  Python : {py_rate:12,.0f} messages/s  ({1e6 / py_rate:7.2f} us each)")
        print(f"  ratio  : {ratio:.2f}x the C++ rate (target >= 0.25x)")
    if args.check is not None and worst < args.check:
        print(f"FAIL: Python is below {args.check}x the C++ rate", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
