import json

from sherman.core.resumable import CpuTally, train_losses


def test_train_losses_keeps_the_later_row_and_skips_a_cut_line(tmp_path):
    rows = [{"step": 1, "loss/train": 3.0}, {"step": 2, "loss/train": 2.0}, {"step": 2, "loss/train": 2.5}, {"step": 3, "loss/train": 1.0}]
    text = "\n".join(json.dumps(r) for r in rows[:3]) + '\n{"step": 3, "loss/tr\n' + json.dumps(rows[3]) + "\n"
    (tmp_path / "metrics.jsonl").write_text(text)
    assert train_losses(tmp_path) == [3.0, 2.5, 1.0]


def test_cpu_tally_adds_the_saved_seconds_of_earlier_calls(tmp_path):
    t = CpuTally(tmp_path / "run")
    assert t.earlier == 0.0
    t.save()
    saved = json.loads((tmp_path / "run" / "cpu_s.json").read_text())["cpu_s"]
    (tmp_path / "run" / "cpu_s.json").write_text(json.dumps({"cpu_s": 100.0}))
    again = CpuTally(tmp_path / "run")
    assert again.earlier == 100.0 and again.total() >= 100.0 and saved >= 0.0
