#!/usr/bin/env python
"""Run a command, write "<wall seconds> s <peak RSS> KB" to a file (GNU time's "%e s %M KB"), exit with its code.

Peak RSS is the largest resident set of any one finished child process (getrusage RUSAGE_CHILDREN,
KB on Linux), as GNU time's %M reports it; not the sum over processes. For machines without GNU time.

Usage: python bench/timed_run.py OUT_FILE COMMAND [ARG ...]
"""

import resource
import subprocess
import sys
import time

if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__.strip().splitlines()[-1])
    t = time.perf_counter()
    rc = subprocess.call(sys.argv[2:])
    kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    with open(sys.argv[1], "w") as f:
        f.write(f"{time.perf_counter() - t:.2f} s {kb} KB\n")
    sys.exit(rc)
