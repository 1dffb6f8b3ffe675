"""Paper reproductions. Each module exposes `CLAIM: str` and `run(budget, out_dir) -> dict`.

`budget` is "smoke" (seconds, used by tests), "quick" (minutes, the default of `sherman reproduce`)
or "full". `run` trains what it needs, writes `results.json` and PNG plots into `out_dir`, and
returns a dict with (at least) these keys:

    name      str                    experiment name (key of EXPERIMENTS)
    claim     str                    the paper's headline claim, one sentence, with its source
    verdict   str                    "reproduced" | "partly" | "not reproduced" | "not testable here" (rule: verdict.py)
    rows      list[dict]             one per claim: {"claim", "paper", "ours", "verdict"} (strings)
    plots     list[str]              PNG file names relative to out_dir
    audio     list[str]              optional WAV file names relative to out_dir (embedded as players)
    texts     list[str]              optional text files relative to out_dir, shown beside the players (e.g. the dialogue)
    notes     str                    optional free text: what was measured, on what, with which seeds
    metrics   dict                   optional raw numbers

The literal dict below is the whole registry: add one line per experiment.
"""

EXPERIMENTS: dict[str, str] = {
    "core_lm": "sherman.experiments.core_lm",
    "opo": "sherman.experiments.opo",
    "rspo": "sherman.experiments.rspo",
    "planning": "sherman.experiments.planning",
    "sparse_decoding": "sherman.experiments.sparse_decoding",
    "asyncthink": "sherman.experiments.asyncthink",
    "delt": "sherman.experiments.delt",
    "vibevoice": "sherman.experiments.vibevoice",
    "agentic6g": "sherman.experiments.agentic6g",
    "rpt": "sherman.experiments.rpt",
}

BUDGETS = ("smoke", "quick", "full")
