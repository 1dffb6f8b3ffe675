"""`sherman reproduce [NAMES ...] [--budget smoke|quick|full] [--out runs]`: the main job.

Runs each named experiment (default: all of `EXPERIMENTS`) in its own folder `OUT/<name>/`, shows
progress (each line names its experiment; inside experiments: arm, seed, step of total, ETA), keeps going when one fails (its error is recorded and shown in the report), and writes
`OUT/report/index.html` (self-contained: plots and audio embedded) plus `OUT/report/results.json`.
Exit status 0 when every experiment ran (whatever its verdict), 1 when one crashed.
"""

from __future__ import annotations

import importlib
import json
import platform
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from sherman.core.config import Alias, Positional, parse
from sherman.core.errors import ShermanError
from sherman.experiments import EXPERIMENTS
from sherman.experiments.verdict import VERDICTS, counted, overall

REQUIRED_KEYS = ("name", "claim", "verdict", "rows")


def run_one(name: str, budget: str, out_root: Path) -> dict:
    """Import and run one experiment; always returns a result dict (an 'error' verdict on crash)."""
    out_dir = out_root / name
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    try:
        mod = importlib.import_module(EXPERIMENTS[name])
        res = mod.run(budget, out_dir)
        missing = [k for k in REQUIRED_KEYS if k not in res]
        if missing:
            raise ValueError(f"experiment {name} returned no {missing}")
        if res["verdict"] not in VERDICTS:
            raise ValueError(f"experiment {name}: verdict {res['verdict']!r} not in {VERDICTS}")
        bad = [r.get("verdict") for r in res["rows"] if r.get("verdict") not in VERDICTS]
        if bad:
            raise ValueError(f"experiment {name}: row verdicts {bad} not in {VERDICTS}")
        claims = counted(res["rows"])
        if claims:  # the experiment's verdict is the rule's combination of its claim rows (sherman.experiments.verdict)
            res["verdict"] = overall(claims)
    except Exception as e:  # noqa: BLE001 - a crash of one experiment must not stop the others
        tb = traceback.format_exc()
        (out_dir / "error.txt").write_text(tb)
        res = {
            "name": name,
            "claim": getattr(importlib.import_module(EXPERIMENTS[name]), "CLAIM", "") if name in EXPERIMENTS else "",
            "verdict": "error",
            "rows": [],
            "notes": f"{type(e).__name__}: {e}",
            "error": tb[-4000:],
        }
    res["seconds"] = round(time.time() - t0, 1)
    res["budget"] = budget
    res["dir"] = str(out_dir)
    res.setdefault("plots", [])
    res.setdefault("audio", [])
    return res


def environment() -> dict:
    import os

    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def reproduce(names: list[str], budget: str, out_root: Path) -> list[dict]:
    """Run the experiments one after another. Each one's output lines start with `[name]` (stdout is prefixed, and
    its progress lines, see `sherman.core.progress`, name it too); after each, one line with its verdict and time and
    the overall elapsed time."""
    import contextlib
    import sys

    from sherman.core.progress import LinePrefixer, experiment_context, fmt_duration
    from sherman.report import write_report

    results = []
    t0 = time.time()
    for i, name in enumerate(names, 1):
        print(f"== reproduce ({budget}) {i}/{len(names)}: {name}", flush=True)
        with experiment_context(name), contextlib.redirect_stdout(LinePrefixer(sys.stdout, f"[{name}] ")):
            res = run_one(name, budget, out_root)
        results.append(res)
        print(f"== {name}: {res['verdict']} ({fmt_duration(res['seconds'])}; {fmt_duration(time.time() - t0)} since start)", flush=True)
    report_dir = out_root / "report"
    path = write_report(results, report_dir, environment())
    print(f"report: {path}")
    return results


@dataclass
class ReproduceArgs:
    names: Positional[list[str]] = field(default_factory=list)
    """Experiments to run (default: all); `--list` shows them with their claims."""
    budget: Literal["smoke", "quick", "full"] = "quick"
    """smoke (seconds, for tests), quick (minutes; `make demo`) or full."""
    out: str = "runs"
    """Output root: each experiment writes OUT/<name>/, the report goes to OUT/report/index.html."""
    list_experiments: Annotated[bool, Alias("--list", replace=True)] = False
    """List the experiments and their claims, then exit."""


def main(argv: list[str]) -> int:
    args = parse(ReproduceArgs, argv, prog="sherman reproduce", description=__doc__)
    if args.list_experiments:
        for name, mod in EXPERIMENTS.items():
            print(f"{name:<18} {getattr(importlib.import_module(mod), 'CLAIM', '')}")
        return 0
    unknown = [n for n in args.names if n not in EXPERIMENTS]
    if unknown:
        raise ShermanError(f"unknown experiment(s) {unknown}; known: {', '.join(EXPERIMENTS)}")
    names = args.names or list(EXPERIMENTS)
    results = reproduce(names, args.budget, Path(args.out))
    return 1 if any(r["verdict"] == "error" for r in results) else 0


def dump_results(res: dict, out_dir: Path) -> dict:
    """Write results.json for an experiment (helper for experiment modules); returns res."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(res, indent=2, default=str))
    return res
