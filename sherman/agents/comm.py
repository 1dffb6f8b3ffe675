"""Numeric multi-user MISO downlink tools: channels, precoders, power allocation, WMMSE, evaluation.

The "tools" of the agentic 6G system (arXiv 2505.22311, Sec. IV; CommLLM, arXiv 2312.07850): every score an
agent sees is computed here, never judged by a language model. Pure NumPy/SciPy functions of arrays; the
agent-facing wrappers with argument schemas are in `sherman.agents.tools`.

System model (single cell, M base-station antennas, K single-antenna users, narrowband):
    y_k = h_k x + n_k,   x = sum_j sqrt(p_j) w_j s_j,   n_k ~ CN(0, sigma^2)
`H` is (K, M) with row h_k; precoder directions `W` are (M, K) with unit-norm columns; powers `p` are (K,)
with sum(p) <= P. Channels are stored noise-normalised (h_k already divided by sigma), so
    SINR_k = p_k |h_k w_k|^2 / (sum_{j != k} p_j |h_k w_j|^2 + 1)
and P is the transmit power in the same units (linear, relative to the noise power after normalisation).

Choices (documented, configurable by argument):
- Path loss: 3GPP TR 38.901 UMa LOS below the breakpoint, PL = 28.0 + 22 log10(d) + 20 log10(f_c / 1 GHz) dB,
  log-normal shadowing with sigma_SF = 4 dB; noise -174 dBm/Hz + 10 log10(B) + NF.
- Regularised ZF / MMSE: W ∝ H^H (H H^H + (K / P) I)^{-1} (the MMSE-optimal regularisation for equal powers).
- Water-filling is over the per-user gains g_k = |h_k w_k|^2 treating interference as zero (exact for ZF;
  a heuristic for MRT / RZF, as in the tutorial's examples).
- Max-min fairness solves max t s.t. SINR_k >= t, sum p <= P by bisection on t; each t is checked by solving
  the linear power-control system (I - D F) p = D 1 (D = diag(t / G_kk), F the cross gains), which is feasible
  iff its solution is non-negative with sum <= P.
- WMMSE (Shi, Razaviyayn, Luo, Hong 2011) for weighted sum rate, initialised with RZF at equal power; the
  Lagrange multiplier of the power constraint by bisection.
"""

from __future__ import annotations

import math

import numpy as np

LOG2E = math.log2(math.e)


# ---------------------------------------------------------------------------------------------- units


def db_to_lin(x_db: float | np.ndarray) -> float | np.ndarray:
    return 10.0 ** (np.asarray(x_db, dtype=float) / 10.0)


def lin_to_db(x: float | np.ndarray) -> float | np.ndarray:
    return 10.0 * np.log10(np.asarray(x, dtype=float))


def dbm_to_watt(p_dbm: float) -> float:
    return 10.0 ** ((p_dbm - 30.0) / 10.0)


def noise_power_dbm(bandwidth_hz: float, noise_figure_db: float) -> float:
    """Thermal noise -174 dBm/Hz over the bandwidth plus the receiver noise figure."""
    return -174.0 + 10.0 * math.log10(bandwidth_hz) + noise_figure_db


# ---------------------------------------------------------------------------------------------- channels


def rayleigh(rng: np.random.Generator, k: int, m: int) -> np.ndarray:
    """i.i.d. CN(0, 1) small-scale fading. (K, M) complex."""
    return (rng.standard_normal((k, m)) + 1j * rng.standard_normal((k, m))) / math.sqrt(2.0)


def rician(rng: np.random.Generator, k: int, m: int, k_factor_db: float) -> np.ndarray:
    """Rician fading with K-factor: sqrt(K/(K+1)) LOS (uniform linear array, half-wavelength spacing, random angle
    per user) + sqrt(1/(K+1)) Rayleigh. Unit average power per entry. (K, M) complex."""
    kf = float(db_to_lin(k_factor_db))
    theta = rng.uniform(-math.pi / 2, math.pi / 2, size=(k, 1))  # (K, 1) angle of departure
    los = np.exp(1j * math.pi * np.sin(theta) * np.arange(m)[None, :])  # (K, M)
    return math.sqrt(kf / (kf + 1.0)) * los + math.sqrt(1.0 / (kf + 1.0)) * rayleigh(rng, k, m)


def pathloss_uma_los_db(distance_m: np.ndarray, carrier_ghz: float) -> np.ndarray:
    """3GPP TR 38.901 UMa LOS path loss (below the breakpoint distance), in dB."""
    d = np.maximum(np.asarray(distance_m, dtype=float), 10.0)
    return 28.0 + 22.0 * np.log10(d) + 20.0 * np.log10(carrier_ghz)


def large_scale_gain(
    rng: np.random.Generator, distance_m: np.ndarray, carrier_ghz: float = 3.5, shadowing_db: float = 4.0
) -> np.ndarray:
    """Linear large-scale gain 10^(-(PL + X)/10), X ~ N(0, shadowing_db^2). (K,)"""
    pl = pathloss_uma_los_db(distance_m, carrier_ghz) + shadowing_db * rng.standard_normal(np.shape(distance_m))
    return db_to_lin(-pl)


# ---------------------------------------------------------------------------------------------- precoders


def _unit_columns(w: np.ndarray) -> np.ndarray:
    return w / np.linalg.norm(w, axis=0, keepdims=True)


def mrt(h: np.ndarray) -> np.ndarray:
    """Maximum-ratio transmission: w_k ∝ h_k^H. (K, M) -> (M, K)"""
    return _unit_columns(h.conj().T)


def zf(h: np.ndarray) -> np.ndarray:
    """Zero-forcing: W ∝ H^H (H H^H)^{-1}, so h_k w_j = 0 for j != k. Needs M >= K. (K, M) -> (M, K)"""
    k, m = h.shape
    if m < k:
        raise ValueError(f"zero-forcing needs at least as many antennas as users (M={m} < K={k})")
    return _unit_columns(h.conj().T @ np.linalg.inv(h @ h.conj().T))


def rzf(h: np.ndarray, total_power: float) -> np.ndarray:
    """Regularised ZF / MMSE precoder: W ∝ H^H (H H^H + (K / P) I)^{-1}. (K, M) -> (M, K)"""
    k = h.shape[0]
    return _unit_columns(h.conj().T @ np.linalg.inv(h @ h.conj().T + (k / total_power) * np.eye(k)))


def precoder(name: str, h: np.ndarray, total_power: float) -> np.ndarray:
    if name == "mrt":
        return mrt(h)
    if name == "zf":
        return zf(h)
    if name in ("rzf", "mmse"):
        return rzf(h, total_power)
    raise ValueError(f"unknown precoder {name!r} (mrt, zf, rzf)")


# ---------------------------------------------------------------------------------------------- SINR and rates


def gain_matrix(h: np.ndarray, w: np.ndarray) -> np.ndarray:
    """G[k, j] = |h_k w_j|^2. (K, M), (M, K) -> (K, K)"""
    return np.abs(h @ w) ** 2


def sinr(gains: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Per-user SINR from the gain matrix and powers (noise power 1). (K, K), (K,) -> (K,)"""
    signal = np.diag(gains) * p  # (K,)
    interference = gains @ p - signal  # (K,)
    return signal / (interference + 1.0)


def rates(gains: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Achievable rate log2(1 + SINR_k) in bit/s/Hz. (K,)"""
    return np.log2(1.0 + sinr(gains, p))


def jain(x: np.ndarray) -> float:
    """Jain's fairness index (sum x)^2 / (K sum x^2), in [1/K, 1]."""
    x = np.asarray(x, dtype=float)
    s2 = float(np.sum(x**2))
    return float(np.sum(x) ** 2 / (len(x) * s2)) if s2 > 0 else 0.0


def energy_efficiency(sum_rate: float, bandwidth_hz: float, tx_power_w: float, circuit_power_w: float, pa_eff: float) -> float:
    """Bits per joule: B * sum rate / (P_tx / eta_PA + P_circuit)."""
    return bandwidth_hz * sum_rate / (tx_power_w / pa_eff + circuit_power_w)


# ---------------------------------------------------------------------------------------------- power allocation


def equal_power(k: int, total_power: float) -> np.ndarray:
    return np.full(k, total_power / k)


def water_filling(g: np.ndarray, total_power: float, iters: int = 200) -> np.ndarray:
    """Maximise sum log2(1 + g_k p_k) s.t. sum p = P, p >= 0: p_k = max(0, mu - 1/g_k), mu by bisection. (K,)"""
    g = np.asarray(g, dtype=float)
    inv = 1.0 / g
    lo, hi = 0.0, float(np.max(inv)) + total_power
    for _ in range(iters):
        mu = 0.5 * (lo + hi)
        if np.maximum(mu - inv, 0.0).sum() > total_power:
            hi = mu
        else:
            lo = mu
    p = np.maximum(0.5 * (lo + hi) - inv, 0.0)
    return p * (total_power / p.sum())  # remove the bisection's last ~1e-16 relative slack


def _powers_for_sinr(gains: np.ndarray, t: float) -> np.ndarray | None:
    """Smallest powers with SINR_k = t for all k, or None when t is infeasible at any power. (K,)"""
    d = t / np.diag(gains)  # (K,)
    f = gains - np.diag(np.diag(gains))  # cross gains
    a = np.eye(len(d)) - d[:, None] * f
    try:
        p = np.linalg.solve(a, d)
    except np.linalg.LinAlgError:
        return None
    return p if np.all(p >= 0) else None


def max_min_fair(gains: np.ndarray, total_power: float, iters: int = 50) -> np.ndarray:
    """Maximise min_k SINR_k s.t. sum p <= P, by bisection on the common SINR target t. (K,)"""
    lo, hi = 0.0, float(np.max(np.diag(gains))) * total_power  # no user beats its interference-free SINR
    best = equal_power(len(gains), total_power) * 0.0
    for _ in range(iters):
        t = 0.5 * (lo + hi)
        p = _powers_for_sinr(gains, t)
        if p is not None and p.sum() <= total_power:
            lo, best = t, p
        else:
            hi = t
    return best * (total_power / best.sum()) if best.sum() > 0 else equal_power(len(gains), total_power)


def allocate(policy: str, gains: np.ndarray, total_power: float) -> np.ndarray:
    if policy == "equal":
        return equal_power(len(gains), total_power)
    if policy == "water_filling":
        return water_filling(np.diag(gains), total_power)
    if policy == "max_min":
        return max_min_fair(gains, total_power)
    raise ValueError(f"unknown power policy {policy!r} (equal, water_filling, max_min)")


# ---------------------------------------------------------------------------------------------- WMMSE


def wmmse(
    h: np.ndarray, total_power: float, weights: np.ndarray | None = None, iters: int = 100, tol: float = 1e-7
) -> tuple[np.ndarray, list[float]]:
    """WMMSE for the weighted sum rate of the MISO downlink (Shi et al., IEEE TSP 2011, Algorithm 1).

    Returns the beamformers V (M, K) with sum ||v_k||^2 <= P (powers are folded into V) and the weighted sum
    rate after each iteration (non-decreasing: each block update minimises the WMSE cost exactly).
    """
    k, m = h.shape
    alpha = np.ones(k) if weights is None else np.asarray(weights, dtype=float)
    v = rzf(h, total_power) * math.sqrt(total_power / k)  # (M, K)
    history = [float(alpha @ np.log2(1.0 + sinr(gain_matrix(h, v), np.ones(k))))]
    for _ in range(iters):
        hv = h @ v  # (K, K): hv[k, j] = h_k v_j
        denom = np.sum(np.abs(hv) ** 2, axis=1) + 1.0  # (K,)
        u = np.diag(hv) / denom  # (K,) MMSE receivers
        e = 1.0 - np.real(np.conj(u) * np.diag(hv))  # (K,) MSEs
        wt = 1.0 / e  # (K,) MSE weights
        c = (alpha * wt * np.abs(u) ** 2)  # (K,)
        a = (h.conj().T * c) @ h  # (M, M) = sum_k c_k h_k^H h_k
        b = h.conj().T * (alpha * wt * u)  # (M, K) column k = alpha_k w_k u_k h_k^H
        v = _v_update(a, b, total_power)
        history.append(float(alpha @ np.log2(1.0 + sinr(gain_matrix(h, v), np.ones(k)))))
        if history[-1] - history[-2] < tol * max(1.0, abs(history[-1])):
            break
    return v, history


def _v_update(a: np.ndarray, b: np.ndarray, total_power: float, iters: int = 60) -> np.ndarray:
    """V(mu) = (A + mu I)^{-1} B with the smallest mu >= 0 such that ||V||_F^2 <= P.

    With A = U diag(lam) U^H, ||V(mu)||^2 = sum_i c_i / (lam_i + mu)^2 (c = row energies of U^H B) is convex and
    decreasing in mu, so Newton's method from the left converges monotonically to the root; the last ~1e-12 of
    excess power is removed by scaling.
    """
    lam, u = np.linalg.eigh(a)  # A is Hermitian PSD, rank <= K
    null = lam <= 1e-10 * max(float(lam.max()), 1e-300)
    c = u.conj().T @ b  # (M, K)
    c[null] = 0.0  # B lies in A's range: drop round-off there (minimum-norm solution at mu = 0)
    lam = np.where(null, 1.0, lam)
    c2 = np.sum(np.abs(c) ** 2, axis=1)  # (M,)
    mu = 0.0
    for _ in range(iters):  # f(0) > 0 or we stop at once; Newton from the left never overshoots the root
        d = lam + mu
        f = float(np.sum(c2 / d**2)) - total_power
        if f <= 1e-12 * total_power:
            break
        mu += f / float(2.0 * np.sum(c2 / d**3))
    v = u @ (c / (lam + mu)[:, None])
    pw = float(np.sum(np.abs(v) ** 2))
    return v * np.sqrt(total_power / pw) if pw > total_power else v


def split_beamformers(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """V (M, K) with powers folded in -> unit-norm directions W (M, K) and powers p (K,)."""
    p = np.sum(np.abs(v) ** 2, axis=0)
    return v / np.sqrt(np.maximum(p, 1e-300)), p


# ---------------------------------------------------------------------------------------------- theory


def siso_rayleigh_capacity(snr: float) -> float:
    """Ergodic capacity E[log2(1 + rho |h|^2)], h ~ CN(0, 1): log2(e) exp(1/rho) E1(1/rho) bit/s/Hz."""
    from scipy.special import exp1

    return LOG2E * math.exp(1.0 / snr) * float(exp1(1.0 / snr))
