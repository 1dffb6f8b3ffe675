"""`sherman CMD --help` only parses: importing `sherman.cli` and building every subcommand's parser (each command's
`--help`, which builds the parser and prints it) imports no torch (nor numpy, matplotlib, transformers, fastapi), so help answers in a fraction of a second instead of
paying for torch's import (seconds on a 2-core CPU). Checked through `sys.modules` in a fresh interpreter, not by timing.
"""

from __future__ import annotations

import json
import subprocess
import sys

from sherman.cli import COMMANDS

# commands whose options sit behind a subcommand: every subcommand's parser is built too
SUBCOMMANDS = {"seer": ["train"], "tts": ["train-tokenizer"], "data": ["score", "select", "order", "corpus"], "rpt": ["entropy", "train", "eval"], "agent": ["bench"]}

PROBE = r"""
import contextlib, io, json, sys
import sherman.cli
heavy = lambda: sorted(m for m in ("torch", "numpy", "transformers", "matplotlib", "fastapi", "uvicorn") if m in sys.modules)
out = {"import sherman.cli": heavy()}
for argv in json.loads(sys.argv[1]):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        code = sherman.cli.main(argv + ["--help"])
    out[" ".join(argv)] = heavy() if code == 0 and buf.getvalue().strip() else f"exit {code}: {buf.getvalue()[-300:]}"
    if out[" ".join(argv)]:
        break  # the first command that imports torch is named; later ones would be masked by it
print(json.dumps(out))
"""


def test_help_imports_no_torch():
    argvs = [[name] for name in COMMANDS] + [[name, sub] for name, subs in SUBCOMMANDS.items() for sub in subs]
    res = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argvs)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    seen = json.loads(res.stdout.strip().splitlines()[-1])
    bad = {k: v for k, v in seen.items() if v}
    assert not bad, f"--help imported heavy modules (or failed): {bad}"
    assert len(seen) == 1 + len(argvs), f"not every command was checked: {sorted(seen)}"
