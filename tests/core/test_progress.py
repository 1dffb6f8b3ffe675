"""Progress lines: step of total, ETA from the mean time per unit, plain periodic lines without a TTY, the experiment's name."""

import io

from sherman.core.progress import LinePrefixer, Progress, experiment_context, fmt_duration


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_plain_lines_every_period_with_eta_and_name():
    clock, out = Clock(), io.StringIO()
    with experiment_context("planning"):
        p = Progress(10, "steps", stream=out, every_s=30, tty=False, clock=clock)
    for _ in range(10):
        clock.t += 10.0  # 10 s per step
        p.advance(1, arm="pg", seed=1)
    p.close()
    lines = out.getvalue().splitlines()
    # the first step prints (the period starts at -inf), then every 30 s (steps 4, 7, 10), then the final line
    assert len(lines) == 5
    assert lines[0] == "[planning] arm pg, seed 1: 1/10 steps (10%), 10s elapsed, ETA 1m30s"
    assert lines[-1] == "[planning] arm pg, seed 1: 10/10 steps (100%), 1m40s elapsed, ETA 0s"


def test_tty_rewrites_one_line():
    clock, out = Clock(), io.StringIO()
    p = Progress(4, "runs", name="x", stream=out, tty=True, clock=clock)
    for _ in range(4):
        clock.t += 1.0
        p.advance()
    p.close()
    text = out.getvalue()
    assert text.count("\r") == 5 and text.endswith("4/4 runs (100%), 4s elapsed, ETA 0s\n")


def test_fmt_duration_and_prefixer():
    assert [fmt_duration(s) for s in (12, 190, 4000)] == ["12s", "3m10s", "1h06m"]
    out = io.StringIO()
    w = LinePrefixer(out, "[e] ")
    w.write("a\nb")
    w.write("c\n\rd\n")
    assert out.getvalue() == "[e] a\n[e] bc\n\r[e] d\n"
