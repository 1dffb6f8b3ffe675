import numpy as np
import pytest

from sherman.speech.data import espeak_available
from sherman.speech.dsp import read_wav


@pytest.mark.skipif(not espeak_available(), reason="espeak-ng not installed")
def test_vibevoice_smoke_trains_and_writes_24khz_wavs(tmp_path):
    from sherman.experiments.vibevoice import CLAIM, run

    res = run("smoke", tmp_path)
    assert res["name"] == "vibevoice" and res["claim"] == CLAIM
    assert res["verdict"] in ("reproduced", "partly", "not reproduced")
    assert {"claim", "paper", "ours", "verdict"} <= set(res["rows"][0])
    assert res["rows"][0]["verdict"] == "reproduced"  # 3200x / 7.5 Hz
    assert res["metrics"]["compress/token_rate_ratio_vs_encodec"] == 80.0
    for name in res["audio"]:
        audio, sr = read_wav(tmp_path / name)
        assert sr == 24000 and len(audio) > 0 and np.isfinite(audio).all()
    assert "vibevoice.wav" in res["audio"] and (tmp_path / "model.pt").is_file() and (tmp_path / "results.json").is_file()
    for p in res["plots"]:
        assert (tmp_path / p).stat().st_size > 1000
