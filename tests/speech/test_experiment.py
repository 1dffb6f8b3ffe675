import numpy as np
import pytest

from sherman.speech.data import espeak_available
from sherman.speech.dsp import read_wav


@pytest.mark.skipif(not espeak_available(), reason="espeak-ng not installed")
def test_vibevoice_smoke_trains_and_writes_24khz_wavs(tmp_path, monkeypatch, capsys):
    from sherman.cli import main as cli_main
    from sherman.experiments.vibevoice import CLAIM, run, stage_dirs

    root = tmp_path / "artifacts"
    monkeypatch.setenv("SHERMAN_ARTIFACTS", str(root))
    # train once (`sherman tts train-tokenizer`), reuse: a second call and the experiment load the cached tokenizers
    assert cli_main(["tts", "train-tokenizer", "--budget", "smoke"]) == 0
    assert "acoustic: trained (new)" in capsys.readouterr().out
    mtime = (stage_dirs("smoke", root)["acoustic"] / "manifest.json").stat().st_mtime_ns
    assert cli_main(["tts", "train-tokenizer", "--budget", "smoke", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "acoustic: reused" in out and "semantic: reused" in out
    assert (stage_dirs("smoke", root)["acoustic"] / "manifest.json").stat().st_mtime_ns == mtime
    res = run("smoke", tmp_path)
    assert res["metrics"]["cache/acoustic_reused"] == 1.0 and res["metrics"]["cache/semantic_reused"] == 1.0
    assert res["metrics"]["cache/lm_diffusion_reused"] == 0.0 and (stage_dirs("smoke", root)["lm_diffusion"] / "manifest.json").is_file()
    assert res["metrics"]["train/vae_steps"] == 3  # the cached history came back with the weights
    assert res["name"] == "vibevoice" and res["claim"] == CLAIM
    assert res["verdict"] in ("reproduced", "partly", "not reproduced", "not testable here")
    assert {"claim", "paper", "ours", "verdict"} <= set(res["rows"][0])
    assert res["rows"][0]["verdict"] == "reproduced"  # 3200x / 7.5 Hz
    assert res["metrics"]["compress/token_rate_ratio_vs_encodec"] == 80.0
    for name in res["audio"]:
        audio, sr = read_wav(tmp_path / name)
        assert sr == 24000 and len(audio) > 0 and np.isfinite(audio).all()
    assert "vibevoice.wav" in res["audio"] and (tmp_path / "model.pt").is_file() and (tmp_path / "results.json").is_file()
    for p in res["plots"]:
        assert (tmp_path / p).stat().st_size > 1000
    m = res["metrics"]  # the recognizer's calibration table: ground truth, each degradation, tokenizer round trips by stage
    for k in ("ground_truth", "noise_5dB", "lowpass_3kHz", "eq_tilt_6dB", "speed_1.1", "roundtrip_step1", "roundtrip_step2", "roundtrip_final"):
        assert 0.0 <= m[f"calib/{k}/per"] <= 10.0, k
    assert "recognizer_calibration.txt" in res["texts"] and "roundtrip_final" in (tmp_path / "recognizer_calibration.txt").read_text()
    assert "calibration" in res["notes"]
    for name in ("gt", "recon", "vibevoice", "regression"):
        assert 0.0 <= m[f"eval/{name}/prompt_pref"] <= 1.0
        assert m[f"eval/{name}/per"] >= 0.0
    for name in ("gt", "vibevoice", "regression"):
        assert m[f"eval/single/{name}/per"] >= 0.0
    assert "single-speaker" in res["rows"][3]["ours"]
    for split in ("single", "seen"):  # the script-reliance diagnostic
        assert m[f"eval/{split}/tf_mse/right"] >= 0.0 and m[f"eval/{split}/tf_mse/swapped"] >= 0.0
    assert "swapped line" in res["rows"][3]["ours"]
    assert m["cache/evaluators_reused"] == 0.0 and (stage_dirs("smoke", root)["evaluators"] / "manifest.json").is_file()
    # a second run reuses every stage, the evaluators included, and measures the same numbers
    again = run("smoke", tmp_path / "again")["metrics"]
    assert all(again[f"cache/{k}_reused"] == 1.0 for k in ("acoustic", "semantic", "lm_diffusion", "lm_regression", "evaluators"))
    for k in ("calib/ground_truth/per", "calib/roundtrip_final/per", "eval/gt/per", "eval/gt/spk_sim", "eval/vibevoice/per"):
        assert again[k] == m[k], k


@pytest.mark.skipif(not espeak_available(), reason="espeak-ng not installed")
def test_vibevoice_lm_stage_trains_the_alignment_auxiliary(tmp_path):
    """With `align_weight` the LM stage trains a forced aligner once for both LMs, its LMs carry the alignment head,
    the aligner's settings are part of the stage key, and the loss history records the auxiliary."""
    from dataclasses import replace

    from sherman.experiments import vibevoice as V

    b = replace(V.BUDGETS["smoke"], align_weight=1.0, aligner_steps=3)
    data = V.load_data(b)
    dirs = V.stage_dirs("smoke", tmp_path)
    ac, _, _, ac_art = V.acoustic_stage(b, data, dirs["acoustic"])
    sc, _, sc_art = V.semantic_stage(b, data, dirs["semantic"])
    inputs = V.LMInputs()
    lm, hist, art = V.lm_stage(b, data, "diffusion", ac_art, sc_art, (ac, sc), dirs["lm_diffusion"], inputs)
    assert hasattr(lm, "align_head") and lm.align_head.out_features == len(data.inventory)
    assert all("loss/align" in h for h in hist) and art.extra["aligner_cpu_s"] > 0
    assert len(inputs.spans) == len(data.train_audio)
    _, _, reg = V.lm_stage(b, data, "regression", ac_art, sc_art, (ac, sc), dirs["lm_regression"], inputs)
    assert reg.extra["aligner_cpu_s"] == art.extra["aligner_cpu_s"]  # one aligner for both LMs
    off = V.lm_stage(replace(b, align_weight=0.0), data, "diffusion", ac_art, sc_art, (ac, sc), dirs["lm_diffusion"], inputs)
    assert off[2].status != "reused" and not hasattr(off[0], "align_head")  # a different key: retrained


def test_vibevoice_lm_stage_trains_the_word_interleaved_layout(tmp_path):
    """With interleave='words' the LM stage times every training word by the forced aligner (onsets that start at 0,
    never decrease and stay inside the utterance), its LM knows `<next_text>`, and the stage key changes."""
    from dataclasses import replace

    from sherman.experiments import vibevoice as V
    from sherman.speech.data import text_to_ipa
    from sherman.speech.model import NEXT_TEXT

    b = replace(V.BUDGETS["smoke"], interleave="words", text_input="phonemes", aligner_steps=3)
    data = V.load_data(b)
    dirs = V.stage_dirs("smoke", tmp_path)
    ac, _, _, ac_art = V.acoustic_stage(b, data, dirs["acoustic"])
    sc, _, sc_art = V.semantic_stage(b, data, dirs["semantic"])
    inputs = V.LMInputs()
    lm, hist, art = V.lm_stage(b, data, "diffusion", ac_art, sc_art, (ac, sc), dirs["lm_diffusion"], inputs)
    assert lm.cfg.interleave == "words" and NEXT_TEXT in lm.tok.specials and art.extra["aligner_cpu_s"] > 0 and hist
    for u, sp, (_, _, n) in zip(data.corpus.train, inputs.spans, inputs.encoded):
        on = V._word_onsets(u, sp, n, ac.cfg.hop)
        assert len(on) == len(text_to_ipa(u.text).split(" ")) and on[0] == 0
        assert all(a <= b2 for a, b2 in zip(on, on[1:])) and on[-1] < n
    off = V.lm_stage(replace(b, interleave="none"), data, "diffusion", ac_art, sc_art, (ac, sc), dirs["lm_diffusion"], inputs)
    assert off[2].status != "reused" and NEXT_TEXT not in off[0].tok.specials


def _metrics(gt_per, vv_per, reg_per, vv_sim=0.5, reg_sim=0.5, turn=1.0):
    m = {"compress/downsampling": 3200.0, "compress/frames_per_s": 7.5, "compress/token_rate_ratio_vs_encodec": 80.0,
         "compress/bitrate_bps_fp16": 1920.0, "compress/bitrate_ratio_vs_encodec_6kbps": 3.125, "recon/mel_l1": 1.0, "recon/stft_snr_db": 1.0,
         "eval/gt/per": gt_per, "eval/gt/spk_sim": 0.9, "eval/gt/turn_acc": 1.0, "eval/recon/per": gt_per,
         "eval/vibevoice/per": vv_per, "eval/vibevoice/spk_sim": vv_sim, "eval/vibevoice/turn_acc": turn,
         "eval/regression/per": reg_per, "eval/regression/spk_sim": reg_sim}
    for s in (5, 10, 20):
        m[f"sweep/steps{s}/per"] = vv_per
    for c in ("1.0", "1.3", "2.0"):
        m[f"sweep/cfg{c}/per"] = vv_per
    return m


def test_verdict_criteria_are_not_vacuous():
    from sherman.experiments.vibevoice import _verdicts

    v = {r["claim"][:20]: r["verdict"] for r in _verdicts(_metrics(0.05, 0.95, 0.95))}
    assert list(v.values())[3] == "not reproduced"  # unintelligible synthesis
    assert list(v.values())[5] == "not testable here"  # two unintelligible heads: a comparison of two failures
    assert list(v.values())[6] == "not testable here"  # solver-step row needs intelligible synthesis
    # the quick-budget numbers of the issue: diffusion PER 0.948 vs regression 1.034, real audio 0.007
    assert _verdicts(_metrics(0.007, 0.948, 1.034))[5]["verdict"] == "not testable here"
    assert _verdicts(_metrics(0.05, 0.1, 0.1, vv_sim=0.5, reg_sim=0.5))[5]["verdict"] == "not reproduced"  # a tie is no win
    good = [r["verdict"] for r in _verdicts(_metrics(0.05, 0.1, 0.5, vv_sim=0.85, reg_sim=0.3))]
    # every measured level or win comes from one trained model (one seed): no spread, so 'partly' at best (verdict.py)
    assert good[3:] == ["partly", "partly", "partly", "partly"]
    assert good[:2] == ["reproduced", "reproduced"]  # 3200x and 80x are exact properties of the architecture
    # with a mel distance the head comparison uses PER and mel distance (the criteria), not speaker sim
    mel = {**_metrics(0.05, 0.1, 0.5, vv_sim=0.3, reg_sim=0.85), "eval/vibevoice/mel_dtw": 1.0, "eval/regression/mel_dtw": 1.5}
    assert _verdicts(mel)[5]["verdict"] == "partly" and "mel distance" in _verdicts(mel)[5]["ours"]
    assert _verdicts({**mel, "eval/vibevoice/mel_dtw": 1.6})[5]["verdict"] == "partly"  # PER wins, mel loses: mixed
    tie = {**_metrics(0.05, 0.3, 0.3, vv_sim=0.85, reg_sim=0.3), "eval/vibevoice/mel_dtw": 1.6, "eval/regression/mel_dtw": 1.5}
    assert _verdicts(tie)[5]["verdict"] == "not reproduced"  # a better speaker sim does not count once mel distance is measured
    broken_evaluator = [r["verdict"] for r in _verdicts(_metrics(0.9, 0.9, 0.9))]
    assert broken_evaluator[2] == broken_evaluator[3] == "not testable here"


def test_dtw_distance_by_hand_and_against_brute_force():
    import itertools

    import numpy as np

    from sherman.experiments.vibevoice import dtw_distance, mel_dtw

    assert dtw_distance(np.array([[0.0], [1.0]]), np.array([[0.0], [0.0], [1.0]])) == 0.0  # a time-stretched copy
    assert dtw_distance(np.array([[0.0]]), np.array([[1.0]])) == 1.0  # one diagonal step of weight 2, / (1 + 1)
    assert dtw_distance(np.array([[0.0], [0.0]]), np.array([[1.0]])) == 1.0  # diag (2) + vertical (1), / 3
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((4, 3)), rng.standard_normal((5, 3))
    cost = np.abs(a[:, None] - b[None]).mean(-1)

    def best(i, j):  # min weighted cost of a monotone path from (0, 0) to (i, j), by exhaustive recursion
        if i == 0 and j == 0:
            return 2 * cost[0, 0]
        opts = []
        if i > 0:
            opts.append(best(i - 1, j) + cost[i, j])
        if j > 0:
            opts.append(best(i, j - 1) + cost[i, j])
        if i > 0 and j > 0:
            opts.append(best(i - 1, j - 1) + 2 * cost[i, j])
        return min(opts)

    assert abs(dtw_distance(a, b) - best(3, 4) / 9) < 1e-12
    assert all(dtw_distance(x, x) == 0 for x in itertools.islice((rng.standard_normal((n, 2)) for n in range(1, 6)), 5))
    t = np.arange(24000) / 24000
    tone = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    other = (0.3 * np.sin(2 * np.pi * 1500 * t)).astype(np.float32)
    assert mel_dtw(tone, tone) == 0.0 and mel_dtw(other, tone) > 0.5 and mel_dtw(np.repeat(tone, 2)[::2], tone) < 1e-6


def test_bootstrap_per_by_hand():
    import numpy as np

    from sherman.experiments.vibevoice import bootstrap_per

    # every item at the same rate: every resample gives that rate
    assert bootstrap_per(np.array([[1.0], [2.0], [3.0]]), np.array([4.0, 8.0, 12.0])) == (0.25, 0.25)
    # two items of length 2 with 0 and 2 edits: resamples give 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4,
    # so the 2.5% / 97.5% percentiles are 0 and 1
    assert bootstrap_per(np.array([[0.0], [2.0]]), np.array([2.0, 2.0])) == (0.0, 1.0)
    # seeds are averaged per item first: (0 + 2) / 2 = 1 edit on each of two items of length 4 -> exactly 0.25
    assert bootstrap_per(np.array([[0.0, 2.0], [2.0, 0.0]]), np.array([4.0, 4.0])) == (0.25, 0.25)


def test_gv_ratio_by_hand():
    import numpy as np

    from sherman.experiments.vibevoice import gv_ratio

    ref = np.array([[0.0, 1.0, 5.0], [2.0, 3.0, 5.0]])  # bin variances 1, 1, 0 (the last is skipped)
    assert gv_ratio(ref, ref) == 1.0
    assert gv_ratio(2 * ref + 7, ref) == 4.0  # doubling the spread quadruples the variance; an offset does not count
    assert gv_ratio(np.array([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 2.0, 0.0]]), ref) == (0 + 2 / 3) / 2  # flat bin 0, var 2/3 in bin 1


def test_speech_frames_drops_pauses():
    import numpy as np

    from sherman.experiments.vibevoice import speech_frames

    f = np.array([[0.0, 0.0]] * 18 + [[-20.0, -20.0]] * 2)  # 18 speech frames at level 0, 2 silent ones 20 nats down
    assert speech_frames(f).shape == (18, 2)
    assert speech_frames(f, floor=30.0).shape == (20, 2)  # a floor below the silence keeps every frame


def test_paired_bootstrap_diff_by_hand():
    import numpy as np

    from sherman.experiments.vibevoice import paired_bootstrap_diff

    # a is 1 edit better on every item of length 4: every resample differs by exactly -0.25
    assert paired_bootstrap_diff(np.array([[1.0], [2.0]]), np.array([[2.0], [3.0]]), np.array([4.0, 4.0])) == (-0.25, -0.25, -0.25)
    # item 0: a 2 edits better, item 1: a 2 edits worse (length 2 each): the total differs by 0, resamples by -1, 0 or +1
    # with probabilities 1/4, 1/2, 1/4 -> interval [-1, 1]; a's two seeds (0 and 2 edits on item 0) average to 1 first
    assert paired_bootstrap_diff(np.array([[0.0], [2.0]]), np.array([[2.0], [0.0]]), np.array([2.0, 2.0])) == (0.0, -1.0, 1.0)
    assert paired_bootstrap_diff(np.array([[0.0, 2.0], [1.0, 1.0]]), np.array([[1.0], [1.0]]), np.array([2.0, 2.0])) == (0.0, 0.0, 0.0)


def test_verdict_text_shows_synthesis_seeds_and_intervals():
    from sherman.experiments.vibevoice import _verdicts

    m = {**_metrics(0.05, 0.3, 0.5), "eval/vibevoice/per_lo": 0.21, "eval/vibevoice/per_hi": 0.39,
         "eval/vibevoice/per/seed0": 0.28, "eval/vibevoice/per/seed1": 0.32}
    row = _verdicts(m)[3]["ours"]
    assert "PER 0.300 [0.210, 0.390] (synthesis seeds 0.280/0.320)" in row
    head = _verdicts({**m, "eval/head_diff/per": -0.036, "eval/head_diff/per_lo": -0.06, "eval/head_diff/per_hi": -0.01})[5]["ours"]
    assert "(paired difference -0.036 [-0.060, -0.010])" in head
    assert "[" not in _verdicts(_metrics(0.05, 0.3, 0.5))[3]["ours"].split(";")[0]  # nothing measured, nothing shown
