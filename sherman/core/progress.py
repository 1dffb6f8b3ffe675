"""Progress of long jobs (experiments, training loops): what is running, step of total, elapsed time and ETA.

    prog = progress(total=len(seeds) * len(arms) * steps, unit="steps")
    for seed in seeds:
        for arm in arms:
            ...  # each training step:
            prog.advance(1, arm=arm, seed=seed)
    prog.close()

On a terminal the line is rewritten in place (at most every 0.5 s); in a log (no TTY) a plain line is printed at
most every `every_s` seconds (`SHERMAN_PROGRESS_EVERY`, default 30) and at the end, so a log stays short.
`sherman reproduce` names the running experiment (`current_experiment`), and every line starts with it:

    [planning] arm pg, seed 1: 1200/4800 steps (25%), 3m10s elapsed, ETA 9m30s

The ETA is the elapsed time per unit so far times the units left (units should be of similar cost: training steps
of one model size, or runs of one kind). Progress writes to stderr so that a command's results on stdout stay clean.
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO, Any

_EXPERIMENT: list[str] = []


def current_experiment() -> str | None:
    """The experiment `sherman reproduce` is running now (None outside it)."""
    return _EXPERIMENT[-1] if _EXPERIMENT else None


class experiment_context:
    """`with experiment_context("planning"): ...` names the experiment in every progress line inside."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        _EXPERIMENT.append(self.name)
        return self

    def __exit__(self, *exc) -> None:
        _EXPERIMENT.pop()


def fmt_duration(s: float) -> str:
    """12 -> '12s', 190 -> '3m10s', 4000 -> '1h06m'."""
    s = max(0.0, float(s))
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


class Progress:
    """Counts units of work toward `total`; see the module docstring."""

    def __init__(self, total: int, unit: str = "steps", name: str | None = None, stream: IO[str] | None = None,
                 every_s: float | None = None, tty: bool | None = None, clock=time.monotonic):  # fmt: skip
        self.total = max(1, int(total))
        self.unit = unit
        self.name = name if name is not None else current_experiment()
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)()) if tty is None else tty
        self.every_s = float(os.environ.get("SHERMAN_PROGRESS_EVERY", "30")) if every_s is None else every_s
        self.clock = clock
        self.t0 = clock()
        self.done = 0
        self.info: dict[str, Any] = {}
        self._last = -float("inf")
        self._closed = False

    def eta(self) -> float | None:
        """Seconds left, from the mean time per unit so far; None before the first unit."""
        if self.done == 0:
            return None
        return (self.clock() - self.t0) / self.done * max(0, self.total - self.done)

    def line(self) -> str:
        el = self.clock() - self.t0
        what = ", ".join(f"{k} {v}" for k, v in self.info.items())
        eta = self.eta()
        parts = [f"{min(self.done, self.total)}/{self.total} {self.unit} ({100 * min(self.done, self.total) / self.total:.0f}%)",
                 f"{fmt_duration(el)} elapsed", "ETA " + ("?" if eta is None else fmt_duration(eta))]  # fmt: skip
        head = f"[{self.name}] " if self.name else ""
        return head + (f"{what}: " if what else "") + ", ".join(parts)

    def advance(self, n: int = 1, **info: Any) -> None:
        """Count n more units done; `info` (arm=..., seed=...) says what is running."""
        self.done += n
        self.info.update(info)
        now = self.clock()
        if now - self._last >= (0.5 if self.tty else self.every_s):
            self._last = now
            self._emit()

    def set(self, **info: Any) -> None:
        """Say what is running now without counting work (e.g. at the start of an arm)."""
        self.info.update(info)

    def _emit(self, final: bool = False) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + self.line() + ("\n" if final else ""))
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Print the final line (once)."""
        if not self._closed:
            self._closed = True
            self._emit(final=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(total: int, unit: str = "steps", **kwargs: Any) -> Progress:
    """A Progress toward `total` units, named after the running experiment."""
    return Progress(total, unit, **kwargs)


class LinePrefixer:
    """A text stream that writes `prefix` at the start of every line (and after a carriage return) to `target`.
    `sherman reproduce` routes an experiment's stdout through one, so every line names its experiment."""

    def __init__(self, target: IO[str], prefix: str):
        self.target = target
        self.prefix = prefix
        self._at_start = True

    def write(self, s: str) -> int:
        out = []
        for ch in s:
            if self._at_start and ch not in "\n\r":
                out.append(self.prefix)
                self._at_start = False
            out.append(ch)
            if ch in "\n\r":
                self._at_start = True
        self.target.write("".join(out))
        return len(s)

    def flush(self) -> None:
        self.target.flush()

    def isatty(self) -> bool:
        return bool(getattr(self.target, "isatty", lambda: False)())

    def fileno(self) -> int:
        return self.target.fileno()
