"""Run a command; print JSON with its wall time, exit code and peak resident memory.

    python benchmarks/peak_rss.py -- CMD [ARGS...]

Peak RSS is ``ru_maxrss`` of this wrapper's children: the largest resident set reached by the
command or any process it started and waited for (its worker pool), not their sum.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time


def main() -> None:
    argv = sys.argv[1:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        sys.exit("usage: python benchmarks/peak_rss.py -- CMD [ARGS...]")
    t = time.perf_counter()
    rc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    print(json.dumps({"wall_s": wall, "rc": rc.returncode, "peak_rss_mib": peak_kib / 1024,
                      "stderr_tail": rc.stderr[-2000:] if rc.returncode else ""}))


if __name__ == "__main__":
    main()
