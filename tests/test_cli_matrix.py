"""The CLI's edge: every subcommand x {missing file, wrong type, out-of-range value, unknown flag} exits with status 2
and ONE line on stderr (`sherman CMD: error: ...`) naming the problem, with no traceback.

The cases run in-process through `sherman.cli.main` (the same function the `sherman` script calls; parsing and
validation happen before any model work, so each case takes milliseconds); `test_real_processes` runs a few of them
as real processes to check exit status and stderr end to end. A command that reads no file (plan, reproduce,
data corpus) gets a bad choice instead of a missing file, said so in its row.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from sherman.cli import main
from sherman.core.checkpoint import save_checkpoint, step_dir
from sherman.core.model import ModelConfig, Transformer
from sherman.core.tokenizer import CharTokenizer
from sherman.tasks import get_task

NOPE = "/nonexistent/sherman-test"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("matrix")
    tok = CharTokenizer(get_task("arithmetic").alphabet())
    torch.manual_seed(0)
    save_checkpoint(step_dir(root / "run", 2), Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=16, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=32)))
    tok.save(root / "run" / "tokenizer.json")
    (root / "scores.jsonl").write_text('{"index": 0, "score": 1.0}\n')
    (root / "existing").mkdir()
    (root / "existing" / "config.json").write_text("{}")
    (root / "script.txt").write_text("Speaker 0: hello\n")
    import json
    import shutil

    shutil.copytree(root / "run", root / "badcfg")  # a checkpoint whose config.json says "dim": "x" (issue 13)
    step = root / "badcfg" / "step_0000002" / "config.json"
    cfg = json.loads(step.read_text())
    cfg["model"]["dim"] = "x"
    step.write_text(json.dumps(cfg))
    return root


# (case id, argv in which {run} and {root} are replaced by each test's paths, a substring the one-line message must contain)
CASES = [
    ("train-missing", ["train", "--text", NOPE + ".txt"], "no such file"),
    ("train-type", ["train", "--dim", "x"], "--dim: invalid int value: 'x'"),
    ("train-range", ["train", "--n-heads", "3"], "--n-heads: 3 does not divide --dim 128"),
    ("train-range-dim0", ["train", "--dim", "0"], "--dim: must be >= 1"),
    ("train-range-accum", ["train", "--train.batch-size", "5", "--train.grad-accum", "2"], "--train.grad-accum"),
    ("train-range-vocab", ["train", "--text", "{root}/script.txt", "--vocab-size", "128"], "--vocab-size"),
    ("train-unknown", ["train", "--bogus"], "unrecognized arguments: --bogus"),
    ("train-dup-out", ["train", "--train.out-dir", "x"], "unrecognized arguments: --train.out-dir"),
    ("generate-missing", ["generate", NOPE, "--prompt", "1"], "no such checkpoint directory"),
    ("generate-type", ["generate", "{run}", "--prompt", "1", "--max-new-tokens", "many"], "--max-new-tokens: invalid int"),
    ("generate-range", ["generate", "{run}", "--prompt", "1", "--budget", "2"], "--budget: must be in (0, 1]"),
    ("generate-choice", ["generate", "{run}", "--prompt", "1", "--attn", "flash"], "--attn: invalid choice"),
    ("generate-bad-config", ["generate", "{root}/badcfg", "--prompt", "1"], "dim: expected an integer, got str 'x'"),
    ("generate-unknown", ["generate", "{run}", "--bogus"], "unrecognized arguments: --bogus"),
    ("convert-missing", ["convert", "--to-hf", NOPE, "--out", "{root}/hf"], "no such checkpoint directory"),
    ("convert-type", ["convert", "--to-hf", "{run}", "--out", "{root}/hf", "--max-shard-size", "lots"], "--max-shard-size"),
    ("convert-range", ["convert", "--to-hf", "{run}", "--out", "{root}/existing"], "pass --force"),
    ("convert-unknown", ["convert", "--out", "x", "--bogus"], "unrecognized arguments: --bogus"),
    ("rl-missing", ["rl", "--init", NOPE], "no such checkpoint directory"),
    ("rl-type", ["rl", "--steps", "x"], "--steps: invalid int"),
    ("rl-range", ["rl", "--n-experts", "8", "--top-k", "10"], "--top-k"),
    ("rl-range-group", ["rl", "--group-size", "1"], "--group-size: must be >= 2"),
    ("rl-unknown", ["rl", "--out-dir", "x"], "unrecognized arguments: --out-dir"),
    ("think-missing", ["think", "1+2=", "--ckpt", NOPE], "no such checkpoint directory"),
    ("think-type", ["think", "1+2=", "--ckpt", "{run}", "--capacity", "x"], "--capacity: invalid int"),
    ("think-range", ["think", "1+2=", "--ckpt", "{run}", "--capacity", "0"], "--capacity: must be >= 1"),
    ("think-protocol", ["think", "1+2=", "--ckpt", "{run}"], "does not know the AsyncThink protocol"),
    ("think-unknown", ["think", "1+2=", "--bogus"], "unrecognized arguments: --bogus"),
    ("serve-missing", ["serve", NOPE], "no such checkpoint directory"),
    ("serve-type", ["serve", "{run}", "--port", "http"], "--port: invalid int"),
    ("serve-range", ["serve", "{run}", "--port", "70000"], "--port: must be in 0-65535"),
    ("serve-unknown", ["serve", "{run}", "--bogus"], "unrecognized arguments: --bogus"),
    ("seer-missing", ["seer", "train", NOPE], "no such checkpoint directory"),
    ("seer-type", ["seer", "train", "{run}", "--steps", "x"], "--steps: invalid int"),
    ("seer-range", ["seer", "train", "{run}", "--seq-len", "4", "--block-size", "4"], "--seq-len"),
    ("seer-unknown", ["seer", "train", "{run}", "--bogus"], "unrecognized arguments: --bogus"),
    ("seer-no-subcommand", ["seer"], "missing subcommand"),
    ("plan-choice(no file input)", ["plan", "--task", "maze"], "--task: invalid choice"),
    ("plan-type", ["plan", "--kl", "x"], "--kl: invalid float"),
    ("plan-range", ["plan", "--edge-prob", "2"], "--edge-prob: must be in (0, 1]"),
    ("plan-unknown", ["plan", "--bogus"], "unrecognized arguments: --bogus"),
    ("data-no-subcommand", ["data"], "missing subcommand"),
    ("data-score-missing", ["data", "score", NOPE + ".jsonl", "--scorer", "random"], NOPE),
    ("data-score-type", ["data", "score", "c.jsonl", "--dim", "x"], "--dim: invalid int"),
    ("data-select-missing", ["data", "select", NOPE + ".jsonl"], "no such scores file"),
    ("data-select-range", ["data", "select", "{root}/scores.jsonl", "--ratio", "1.5"], "--ratio must be in (0, 1]"),
    ("data-order-range", ["data", "order", "{root}/scores.jsonl", "--folds", "0"], "--folds must be >= 1"),
    ("data-order-unknown", ["data", "order", "{root}/scores.jsonl", "--bogus"], "unrecognized arguments: --bogus"),
    ("data-corpus-type(no file input)", ["data", "corpus", "{root}/c", "--seed", "x"], "--seed: invalid int"),
    ("tts-missing", ["tts", NOPE + ".txt", "--voices", "a.wav"], "script file not found"),
    ("tts-type", ["tts", "{root}/script.txt", "--voices", "a.wav", "--steps", "x"], "--steps: invalid int"),
    ("tts-range", ["tts", "{root}/script.txt", "--voices", "a.wav", "--steps", "0"], "--steps: must be >= 1"),
    ("tts-unknown", ["tts", "{root}/script.txt", "--bogus"], "unrecognized arguments: --bogus"),
    ("reproduce-name(no file input)", ["reproduce", "nope"], "unknown experiment"),
    ("reproduce-type", ["reproduce", "--threads", "x"], "--threads: invalid int"),
    ("reproduce-range", ["reproduce", "--threads", "0"], "--threads: must be >= 1"),
    ("reproduce-unknown", ["reproduce", "--bogus"], "unrecognized arguments: --bogus"),
    ("agent-missing", ["agent", "4 users, 8 antennas, 30 dBm, min rate 1 bit/s/Hz", "--backend", "local", "--ckpt", NOPE], "no such checkpoint"),
    ("agent-type", ["agent", "bench", "--scenarios", "x"], "argument --scenarios: invalid int value: 'x'"),
    ("agent-range", ["agent", "bench", "--scenarios", "0"], "--scenarios must be >= 1"),
    ("agent-unknown", ["agent", "bench", "--bogus"], "unrecognized arguments: --bogus"),
    ("rpt-no-subcommand", ["rpt"], "missing subcommand"),
    ("rpt-missing", ["rpt", "eval", NOPE, "--data", "x.txt"], "no such checkpoint directory"),
    ("rpt-type", ["rpt", "train", "{run}", "--group-size", "x"], "argument --group-size: invalid int value: 'x'"),
    ("rpt-range", ["rpt", "train", "{run}", "--group-size", "1"], "--group-size: must be >= 2"),
    ("rpt-unknown", ["rpt", "entropy", "c.txt", "--bogus"], "unrecognized arguments: --bogus"),
    ("unknown-command", ["frobnicate"], "unknown command"),
]


def _fill(argv: list[str], run) -> list[str]:
    return [a.replace("{run}", str(run / "run")).replace("{root}", str(run)) for a in argv]


@pytest.mark.parametrize("case, argv, needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2(run, capsys, case, argv, needle):
    before = torch.get_num_threads()
    try:
        code = main(_fill(argv, run))
    finally:
        torch.set_num_threads(before)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, (case, err)
    assert len(lines) == 1 and "Traceback" not in err, (case, err)
    assert needle in lines[0] and lines[0].startswith(("sherman ", "sherman: ")), (case, lines[0])


def test_every_subcommand_is_covered():
    from sherman.cli import COMMANDS

    covered = {c[1][0] for c in CASES}
    assert set(COMMANDS) <= covered, set(COMMANDS) - covered


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["serve", "{run}", "--port", "70000"], "--port"),
        (["data"], "missing subcommand"),
        (["train", "--train.batch-size", "5", "--train.grad-accum", "2"], "--train.grad-accum"),
    ],
)
def test_real_processes(run, argv, needle):
    r = subprocess.run([sys.executable, "-m", "sherman.cli", *_fill(argv, run)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr, r.stderr


def test_help_is_fast_path_without_torch():
    """`sherman think/serve/tts/reproduce --help` and the top-level usage do not import torch (measured 3.7 s here)."""
    code = (
        "import sys\n"
        "from sherman.cli import main\n"
        "for argv in (['think', '--help'], ['serve', '--help'], ['--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('torch' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip().splitlines()[-1] == "False", r.stdout + r.stderr
