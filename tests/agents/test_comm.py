"""Theory checks for the numeric communication tools (sherman/agents/comm.py)."""

import math

import numpy as np
import pytest

from sherman.agents import comm


def _channel(seed: int, k: int = 4, m: int = 8) -> np.ndarray:
    return comm.rayleigh(np.random.default_rng(seed), k, m)


def test_noise_power_and_units():
    # -174 dBm/Hz over 10 MHz (+70 dB) with a 7 dB noise figure
    assert comm.noise_power_dbm(10e6, 7.0) == pytest.approx(-97.0)
    assert comm.dbm_to_watt(30.0) == pytest.approx(1.0)
    assert comm.db_to_lin(20.0) == pytest.approx(100.0)


def test_pathloss_uma_los():
    # 28 + 22 log10(100) + 20 log10(3.5) = 28 + 44 + 10.881
    assert comm.pathloss_uma_los_db(np.array([100.0]), 3.5)[0] == pytest.approx(82.8813, abs=1e-3)


def test_rician_unit_power_and_los_limit():
    rng = np.random.default_rng(0)
    h = comm.rician(rng, 2000, 4, k_factor_db=10.0)
    assert np.mean(np.abs(h) ** 2) == pytest.approx(1.0, abs=0.03)
    h_los = comm.rician(np.random.default_rng(1), 3, 6, k_factor_db=60.0)  # essentially pure LOS: |entries| = 1
    assert np.allclose(np.abs(h_los), 1.0, atol=2e-3)


def test_zf_zero_interference():
    h = _channel(0)
    g = comm.gain_matrix(h, comm.zf(h))
    off = g - np.diag(np.diag(g))
    assert np.max(off) < 1e-20 * np.max(np.diag(g)) + 1e-24
    with pytest.raises(ValueError, match="at least as many antennas"):
        comm.zf(_channel(0, k=5, m=4))


def test_water_filling_kkt():
    g = np.array([4.0, 1.0, 0.25, 0.05])
    p = comm.water_filling(g, 3.0)
    assert p.sum() == pytest.approx(3.0, rel=1e-12)
    active = p > 1e-12
    levels = p[active] + 1.0 / g[active]  # one water level on the active set
    assert np.ptp(levels) < 1e-9
    # inactive users' floor 1/g lies above the water level
    assert np.all(1.0 / g[~active] >= levels[0] - 1e-9)
    # hand-derived: 1/g = (0.25, 1, 4, 20); with users 1-2 active mu = (3 + 0.25 + 1) / 2 = 2.125 < 4, so
    # users 3-4 stay dry and p = (2.125 - 0.25, 2.125 - 1, 0, 0)
    assert levels[0] == pytest.approx(2.125, rel=1e-9)
    assert np.allclose(p, [1.875, 1.125, 0.0, 0.0])


def test_water_filling_beats_equal_for_zf():
    h = _channel(3)
    gains = comm.gain_matrix(h, comm.zf(h))
    wf = comm.rates(gains, comm.water_filling(np.diag(gains), 10.0)).sum()
    eq = comm.rates(gains, comm.equal_power(4, 10.0)).sum()
    assert wf >= eq - 1e-12


def test_max_min_equalises_rates():
    h = _channel(1)
    for name in ("zf", "mrt", "rzf"):
        gains = comm.gain_matrix(h, comm.precoder(name, h, 10.0))
        p = comm.max_min_fair(gains, 10.0)
        r = comm.rates(gains, p)
        assert p.sum() == pytest.approx(10.0, rel=1e-9)
        assert np.ptp(r) < 1e-6 * r.mean()
        # and no worse in minimum rate than equal power
        assert r.min() >= comm.rates(gains, comm.equal_power(4, 10.0)).min() - 1e-9


def test_max_min_zf_closed_form():
    # ZF is interference-free: SINR_k = g_k p_k = t with sum p = P gives t = P / sum(1/g_k)
    h = _channel(2)
    gains = comm.gain_matrix(h, comm.zf(h))
    g = np.diag(gains)
    p = comm.max_min_fair(gains, 5.0)
    assert np.allclose(p, (5.0 / np.sum(1.0 / g)) / g, rtol=1e-6)


def test_siso_rayleigh_capacity_monte_carlo():
    rng = np.random.default_rng(0)
    for snr_db in (0.0, 10.0, 20.0):
        rho = comm.db_to_lin(snr_db)
        h = comm.rayleigh(rng, 200_000, 1)[:, 0]
        mc = np.mean(np.log2(1.0 + rho * np.abs(h) ** 2))
        assert mc == pytest.approx(comm.siso_rayleigh_capacity(rho), rel=0.01)
    # hand value at 0 dB: log2(e) * e * E1(1) = 1.4427 * 2.71828 * 0.219384 = 0.8604
    assert comm.siso_rayleigh_capacity(1.0) == pytest.approx(0.8604, abs=1e-3)


def test_wmmse_monotone_and_beats_zf_at_high_snr():
    for seed in range(5):
        h = _channel(seed)
        p_total = comm.db_to_lin(30.0)
        v, hist = comm.wmmse(h, p_total, iters=200)
        assert np.all(np.diff(hist) >= -1e-9 * max(hist))
        assert np.sum(np.abs(v) ** 2) <= p_total * (1 + 1e-9)
        gains = comm.gain_matrix(h, comm.zf(h))
        zf_rate = comm.rates(gains, comm.water_filling(np.diag(gains), p_total)).sum()
        assert hist[-1] >= zf_rate - 1e-6


def test_split_beamformers_roundtrip():
    h = _channel(4)
    v, _ = comm.wmmse(h, 10.0, iters=20)
    w, p = comm.split_beamformers(v)
    assert np.allclose(np.linalg.norm(w, axis=0), 1.0)
    assert np.allclose(comm.sinr(comm.gain_matrix(h, w), p), comm.sinr(comm.gain_matrix(h, v), np.ones(4)))


def test_jain_and_energy_efficiency():
    assert comm.jain(np.array([1.0, 1.0, 1.0])) == pytest.approx(1.0)
    assert comm.jain(np.array([1.0, 0.0, 0.0, 0.0])) == pytest.approx(0.25)
    # 10 MHz * 20 bit/s/Hz / (1 W / 0.5 + 1 W) = 200e6 / 3
    assert comm.energy_efficiency(20.0, 10e6, 1.0, 1.0, 0.5) == pytest.approx(200e6 / 3)
    assert math.isfinite(comm.lin_to_db(2.0))
