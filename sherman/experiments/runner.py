"""`sherman reproduce [NAMES ...] [--budget smoke|quick|full] [--out runs]`: the main job.

Runs each named experiment (default: all of `EXPERIMENTS`) in its own folder `OUT/<name>/`, shows
progress, keeps going when one fails (its error is recorded and shown in the report), and writes
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

import torch

from sherman.core.common import ShermanError
from sherman.core.config import Alias, Positional, parse
from sherman.experiments import EXPERIMENTS

REQUIRED_KEYS = ("name", "claim", "verdict", "rows")
VERDICTS = ("reproduced", "partly", "not reproduced", "not testable here")


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
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from sherman.report import write_report

    console = Console()
    results = []
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), console=console) as prog:
        task = prog.add_task(f"reproduce ({budget})", total=len(names))
        for name in names:
            prog.update(task, description=f"reproduce ({budget}): {name}")
            res = run_one(name, budget, out_root)
            results.append(res)
            color = {"reproduced": "green", "partly": "yellow", "not reproduced": "red"}.get(res["verdict"], "bold red")
            console.print(f"[{color}]{name}: {res['verdict']}[/] ({res['seconds']} s)")
            prog.advance(task)
    report_dir = out_root / "report"
    path = write_report(results, report_dir, environment())
    console.print(f"report: {path}")
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
