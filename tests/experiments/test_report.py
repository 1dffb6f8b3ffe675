"""The HTML report: verdict classes, the dialogue text beside its audio players, plots at report width; the runner
combines row verdicts with the shared rule and names each experiment in its output."""

import wave

import numpy as np

from sherman.report import render


def _wav(path):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(24000)
        w.writeframes(np.zeros(240, np.int16).tobytes())


def test_dialogue_text_beside_players_and_untestable_class(tmp_path):
    _wav(tmp_path / "a.wav")
    (tmp_path / "script_0.txt").write_text("Speaker 0: hello there\nSpeaker 1: hi")
    res = [{"name": "x", "claim": "c", "verdict": "not testable here", "dir": str(tmp_path), "audio": ["a.wav"], "texts": ["script_0.txt"],
            "rows": [{"claim": "c", "paper": "p", "ours": "o", "verdict": "not testable here"}]}]
    html = render(res, {"cpu": "test"})
    block = html[html.index("<div class='dialogue'>"):]
    assert block.index("Speaker 0: hello there") < block.index("<audio controls src='data:audio/wav;base64,")
    assert "class='v-untestable'" in html and "verdict.py" in html


def test_runner_uses_the_rule_and_prefixes_lines(tmp_path, monkeypatch, capsys):
    import sys
    import types

    from sherman.experiments import EXPERIMENTS, runner

    mod = types.ModuleType("fake_exp")
    mod.CLAIM = "claim"

    def run(budget, out_dir):
        print("training arm a")
        return {"name": "fake", "claim": "claim", "verdict": "reproduced",  # the rows say otherwise
                "rows": [{"claim": "1", "paper": "", "ours": "", "verdict": "reproduced"},
                         {"claim": "2", "paper": "", "ours": "", "verdict": "not testable here"}]}

    mod.run = run
    monkeypatch.setitem(sys.modules, "fake_exp", mod)
    monkeypatch.setitem(EXPERIMENTS, "fake", "fake_exp")
    res = runner.reproduce(["fake"], "smoke", tmp_path)
    out = capsys.readouterr().out
    assert res[0]["verdict"] == "partly"
    assert "[fake] training arm a" in out and "== fake: partly" in out


def test_experiment_figures_fit_the_report_width():
    """The report shows each PNG at most 1100 px wide: a figure with a literal layout has at most 2 panels per row and is at
    most 13 in wide, so 10 pt labels stay >= ~9 px on screen (planning's and sparse_decoding's 1 x 4 rows were unreadable)."""
    import ast
    from pathlib import Path

    import sherman.experiments as pkg

    checked = 0
    for path in sorted(Path(pkg.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "subplots"):
                continue
            if len(node.args) >= 2 and isinstance(node.args[1], ast.Constant):
                assert node.args[1].value <= 2, f"{path.name}:{node.lineno}: {node.args[1].value} panels in a row"
            for kw in node.keywords:
                if kw.arg == "figsize" and isinstance(kw.value, ast.Tuple) and isinstance(kw.value.elts[0], ast.Constant):
                    assert kw.value.elts[0].value <= 13, f"{path.name}:{node.lineno}: figure {kw.value.elts[0].value} in wide"
                    checked += 1
    assert checked >= 5


def test_runner_leaves_rows_marked_counts_false_out_of_the_verdict(tmp_path, monkeypatch):
    """A precondition row (or an ablation of ours) is shown but not combined: one reproduced claim beside a failed
    precondition row reads 'reproduced', as the experiment's own verdict does (rspo, planning, agentic6g)."""
    import sys
    import types

    from sherman.experiments import EXPERIMENTS, runner

    mod = types.ModuleType("fake_exp2")
    mod.CLAIM = "claim"
    rows = [{"claim": "precondition", "paper": "", "ours": "", "verdict": "not reproduced", "counts": False},
            {"claim": "1", "paper": "", "ours": "", "verdict": "reproduced"}]
    mod.run = lambda budget, out_dir: {"name": "fake2", "claim": "claim", "verdict": "reproduced", "rows": rows}
    monkeypatch.setitem(sys.modules, "fake_exp2", mod)
    monkeypatch.setitem(EXPERIMENTS, "fake2", "fake_exp2")
    assert runner.reproduce(["fake2"], "smoke", tmp_path)[0]["verdict"] == "reproduced"
    rows[0]["counts"] = True
    assert runner.reproduce(["fake2"], "smoke", tmp_path)[0]["verdict"] == "partly"
