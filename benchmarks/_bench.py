"""Shared by the benchmarks: run this checkout's `sherman` (not whichever one is installed), say on which machine a
figure was measured, and start competing busy processes for a contention run.

Importing this module puts the repository root first on `sys.path`: `python benchmarks/bench_x.py` puts only
`benchmarks/` there, so an editable install elsewhere (another worktree) would otherwise be what runs.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path[:1]:
    sys.path.insert(0, str(ROOT))


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what `platform` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def machine_line(threads: int) -> str:
    """One line: CPU model, core count, torch threads, the linear path, the load average now."""
    onednn = os.environ.get("SHERMAN_ONEDNN", "auto (measured per machine)")
    return (f"machine: {cpu_model()}, {os.cpu_count()} cores; torch threads {threads}; SHERMAN_ONEDNN={onednn}; "
            f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip


@contextlib.contextmanager
def busy_processes(n: int):
    """Start n Python processes that spin on the CPU (a competing job), stop them on exit."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()
            p.wait()
