"""Agent-facing tools over one downlink scenario: pydantic argument schemas, JSON in, JSON out, errors as text.

The agentic system of arXiv 2505.22311 (Sec. IV, "tools") calls these; every number an agent reports must come
from one of them (see `agents.guard_numbers`). A call is `{"name": ..., "args": {...}}`; a malformed call
(unknown tool, wrong type, value out of range, extra field) returns `ToolResult(ok=False, error=...)` with a message
the agent sees, and never raises.

Tools:
    describe_scenario()                                 the scenario's features (users, antennas, SNRs, target)
    evaluate(precoder, power)                           per-user SINR and rate, sum/min rate, Jain, EE, feasibility
    outage(precoder, power, rate_threshold, trials)     Monte Carlo outage over fresh small-scale fading
    wmmse(iters)                                        the weighted-sum-rate WMMSE solution, evaluated
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sherman.agents import comm

PRECODERS = ("mrt", "zf", "rzf")
POWERS = ("equal", "water_filling", "max_min")


@dataclass
class Scenario:
    """One single-cell multi-user MISO downlink problem."""

    users: int = 4
    """K single-antenna users."""
    antennas: int = 8
    """M base-station antennas."""
    power_dbm: float = 30.0
    """Total transmit power in dBm."""
    min_rate: float = 1.0
    """Per-user minimum rate constraint in bit/s/Hz (0 = none)."""
    fading: str = "rayleigh"
    """Small-scale fading: 'rayleigh' or 'rician'."""
    k_factor_db: float = 6.0
    """Rician K-factor in dB (used when fading == 'rician')."""
    cell_radius_m: float = 250.0
    """Users are dropped uniformly in distance in [35 m, radius]."""
    carrier_ghz: float = 3.5
    """Carrier frequency for the path loss."""
    shadowing_db: float = 4.0
    """Log-normal shadowing standard deviation (3GPP UMa LOS: 4 dB)."""
    bandwidth_hz: float = 10e6
    """System bandwidth."""
    noise_figure_db: float = 7.0
    """Receiver noise figure."""
    circuit_power_w: float = 1.0
    """Static circuit power for energy efficiency."""
    pa_efficiency: float = 0.4
    """Power-amplifier efficiency for energy efficiency."""
    seed: int = 0
    """Seed of the user drop and the channel."""

    def __post_init__(self) -> None:
        if not 1 <= self.users <= 64:
            raise ValueError(f"users must be in [1, 64], got {self.users}")
        if not 1 <= self.antennas <= 256:
            raise ValueError(f"antennas must be in [1, 256], got {self.antennas}")
        if not -30.0 <= self.power_dbm <= 60.0:
            raise ValueError(f"power must be in [-30, 60] dBm, got {self.power_dbm}")
        if not 0.0 <= self.min_rate <= 20.0:
            raise ValueError(f"min rate must be in [0, 20] bit/s/Hz, got {self.min_rate}")
        if self.fading not in ("rayleigh", "rician"):
            raise ValueError(f"fading must be 'rayleigh' or 'rician', got {self.fading!r}")
        if self.cell_radius_m <= 35.0:
            raise ValueError(f"cell radius must exceed 35 m, got {self.cell_radius_m}")


def sample_scenario(rng: np.random.Generator, seed: int) -> Scenario:
    """The experiments' scenario distribution: 2-8 users, up to 16 antennas, 0-30 dBm, small to large cells."""
    k = int(rng.integers(2, 9))
    return Scenario(
        users=k,
        antennas=int(rng.integers(max(2, k - 1), 17)),
        power_dbm=float(rng.choice([0.0, 10.0, 20.0, 30.0])),
        min_rate=float(rng.choice([0.0, 0.5, 1.0, 2.0, 3.0])),
        fading=str(rng.choice(["rayleigh", "rician"])),
        k_factor_db=float(rng.choice([0.0, 6.0, 12.0])),
        cell_radius_m=float(rng.choice([150.0, 400.0, 1000.0])),
        seed=seed,
    )


_NUM = r"(-?\d+(?:\.\d+)?)"


def parse_scenario(text: str, **overrides: Any) -> Scenario:
    """'4 users, 8 antennas, 30 dBm, min rate 1 bit/s/Hz[, rician 6 dB]' -> Scenario. ValueError names what is missing."""
    t = text.lower()
    found: dict[str, Any] = {}
    for key, pat, cast in (
        ("users", _NUM + r"\s*(?:users?|ues?)\b", int),
        ("antennas", _NUM + r"\s*(?:antennas?|tx antennas?)\b", int),
        ("power_dbm", _NUM + r"\s*dbm\b", float),
        ("min_rate", r"min(?:imum)?[\s-]*rate\s*(?:of\s*)?" + _NUM, float),
    ):
        m = re.search(pat, t)
        if m:
            found[key] = cast(float(m.group(1)))
    missing = [k for k in ("users", "antennas", "power_dbm") if k not in found]
    if missing:
        raise ValueError(f"could not read {', '.join(missing)} from {text!r} (e.g. '4 users, 8 antennas, 30 dBm, min rate 1 bit/s/Hz')")
    m = re.search(r"rician(?:\s*(?:k\s*=?\s*)?" + _NUM + r"\s*db)?", t)
    if m:
        found["fading"] = "rician"
        if m.group(1):
            found["k_factor_db"] = float(m.group(1))
    found.update(overrides)
    return Scenario(**found)


class CommEnv:
    """A scenario with its channel drawn: the state the tools act on."""

    def __init__(self, sc: Scenario):
        self.sc = sc
        rng = np.random.default_rng(sc.seed)
        self.distance = rng.uniform(35.0, sc.cell_radius_m, size=sc.users)  # (K,)
        self.beta = comm.large_scale_gain(rng, self.distance, sc.carrier_ghz, sc.shadowing_db)  # (K,)
        self.noise_w = comm.dbm_to_watt(comm.noise_power_dbm(sc.bandwidth_hz, sc.noise_figure_db))
        self.power_w = comm.dbm_to_watt(sc.power_dbm)
        self.total_power = self.power_w / self.noise_w  # P relative to the noise power
        self.h = self.draw_fading(rng)  # (K, M) noise-normalised

    def draw_fading(self, rng: np.random.Generator) -> np.ndarray:
        sc = self.sc
        small = comm.rician(rng, sc.users, sc.antennas, sc.k_factor_db) if sc.fading == "rician" else comm.rayleigh(rng, sc.users, sc.antennas)
        return small * np.sqrt(self.beta)[:, None]  # (K, M); the noise is normalised through total_power = P / sigma^2

    def features(self) -> dict[str, float]:
        """Scenario features for planning and long-term memory (SNR = P beta_k / noise, per user at full power)."""
        snr_db = comm.lin_to_db(self.total_power * self.beta)
        return {
            "users": self.sc.users,
            "antennas": self.sc.antennas,
            "power_dbm": self.sc.power_dbm,
            "min_rate": self.sc.min_rate,
            "fading": self.sc.fading,
            "mean_snr_db": round(float(np.mean(snr_db)), 2),
            "min_snr_db": round(float(np.min(snr_db)), 2),
            "max_snr_db": round(float(np.max(snr_db)), 2),
        }

    def configure(self, precoder: str, power: str, h: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Precoder directions W (M, K) and powers p (K,) for a configuration on channel h (default: the scenario's)."""
        h = self.h if h is None else h
        w = comm.precoder(precoder, h, self.total_power)
        p = comm.allocate(power, comm.gain_matrix(h, w), self.total_power)
        return w, p

    def metrics(self, w: np.ndarray, p: np.ndarray) -> dict[str, Any]:
        gains = comm.gain_matrix(self.h, w)
        s = comm.sinr(gains, p)
        r = np.log2(1.0 + s)
        sum_rate = float(r.sum())
        shortfall = float(np.maximum(self.sc.min_rate - r, 0.0).sum())
        return {
            "sinr_db": [round(float(x), 3) for x in comm.lin_to_db(np.maximum(s, 1e-10))],  # floor -100 dB (a user given no power)
            "rates": [round(float(x), 4) for x in r],
            "sum_rate": round(sum_rate, 4),
            "min_rate": round(float(r.min()), 4),
            "jain": round(comm.jain(r), 4),
            "energy_efficiency_mbit_per_j": round(
                comm.energy_efficiency(sum_rate, self.sc.bandwidth_hz, self.power_w, self.sc.circuit_power_w, self.sc.pa_efficiency) / 1e6, 3
            ),
            "violations": int(np.sum(r < self.sc.min_rate - 1e-9)),
            "feasible": bool(shortfall <= 1e-9),
            "score": round(sum_rate if shortfall <= 1e-9 else -shortfall, 4),
        }

    def evaluate(self, precoder: str, power: str) -> dict[str, Any]:
        w, p = self.configure(precoder, power)
        return {"precoder": precoder, "power": power, **self.metrics(w, p)}

    def wmmse(self, iters: int = 100) -> dict[str, Any]:
        v, hist = comm.wmmse(self.h, self.total_power, iters=iters)
        w, p = comm.split_beamformers(v)
        return {"precoder": "wmmse", "power": "wmmse", "iterations": len(hist) - 1, **self.metrics(w, p)}

    def outage(self, precoder: str, power: str, rate_threshold: float, trials: int, seed: int = 0) -> dict[str, Any]:
        """Fraction of (fading draw, user) pairs below the threshold, the configuration recomputed per draw."""
        rng = np.random.default_rng(10_000 + seed)
        below = 0
        for _ in range(trials):
            h = self.draw_fading(rng)
            w, p = self.configure(precoder, power, h)
            below += int(np.sum(comm.rates(comm.gain_matrix(h, w), p) < rate_threshold))
        return {"precoder": precoder, "power": power, "rate_threshold": rate_threshold, "trials": trials,
                "outage": round(below / (trials * self.sc.users), 4)}

    def oracle(self) -> dict[str, Any]:
        """Best feasible configuration over WMMSE and every precoder x power policy (by score)."""
        cands = [self.wmmse()] + [self.evaluate(pc, pw) for pc in self.valid_precoders() for pw in POWERS]
        return max(cands, key=lambda r: r["score"])

    def valid_precoders(self) -> list[str]:
        return [p for p in PRECODERS if p != "zf" or self.sc.antennas >= self.sc.users]


# ---------------------------------------------------------------------------------------------- schemas


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class NoArgs(_Args):
    pass


class EvaluateArgs(_Args):
    precoder: Literal["mrt", "zf", "rzf"] = Field(description="beamforming: maximum-ratio, zero-forcing or regularised ZF (MMSE)")
    power: Literal["equal", "water_filling", "max_min"] = Field(description="power allocation policy")


class OutageArgs(EvaluateArgs):
    rate_threshold: float = Field(ge=0.0, le=20.0, description="rate threshold in bit/s/Hz")
    trials: int = Field(default=200, ge=1, le=5000, description="Monte Carlo fading draws")


class WmmseArgs(_Args):
    iters: int = Field(default=100, ge=1, le=1000, description="maximum WMMSE iterations")


SCHEMAS: dict[str, type[_Args]] = {"describe_scenario": NoArgs, "evaluate": EvaluateArgs, "outage": OutageArgs, "wmmse": WmmseArgs}
DESCRIPTIONS = {
    "describe_scenario": "Features of the scenario: users, antennas, power, per-user SNRs, min-rate target.",
    "evaluate": "Compute per-user SINR and rate, sum rate, min rate, Jain fairness, energy efficiency and feasibility of a precoder + power policy.",
    "outage": "Monte Carlo outage probability of a configuration at a rate threshold over fresh fading draws.",
    "wmmse": "Run WMMSE (weighted sum-rate maximisation) and evaluate its solution.",
}


def openai_tools() -> list[dict[str, Any]]:
    """The tools in the OpenAI `tools` field format (JSON Schema from the pydantic models)."""
    return [{"type": "function", "function": {"name": n, "description": DESCRIPTIONS[n], "parameters": s.model_json_schema()}} for n, s in SCHEMAS.items()]


@dataclass
class ToolResult:
    name: str
    args: dict[str, Any]
    ok: bool
    content: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    seconds: float = 0.0

    def text(self) -> str:
        return json.dumps(self.content if self.ok else {"error": self.error}, sort_keys=True)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def call_tool(env: CommEnv, name: Any, args: Any) -> ToolResult:
    """Validate and run one tool call; every failure is a ToolResult with an error message, never an exception."""
    import time

    t0 = time.perf_counter()
    if not isinstance(name, str) or name not in SCHEMAS:
        return ToolResult(str(name), args if isinstance(args, dict) else {}, False, error=f"unknown tool {name!r}; tools: {', '.join(SCHEMAS)}")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return ToolResult(name, {}, False, error=f"arguments of {name} must be a JSON object, got {type(args).__name__}")
    try:
        a = SCHEMAS[name].model_validate(args)
    except ValidationError as e:
        msgs = "; ".join(f"{'.'.join(str(x) for x in err['loc']) or 'args'}: {err['msg']}" for err in e.errors())
        return ToolResult(name, args, False, error=f"invalid arguments for {name}: {msgs}")
    try:
        if name == "describe_scenario":
            out = env.features()
        elif name == "evaluate":
            out = env.evaluate(a.precoder, a.power)
        elif name == "outage":
            out = env.outage(a.precoder, a.power, a.rate_threshold, a.trials)
        else:
            out = env.wmmse(a.iters)
    except (ValueError, np.linalg.LinAlgError) as e:  # e.g. ZF with fewer antennas than users
        return ToolResult(name, args, False, error=f"{name} failed: {e}", seconds=time.perf_counter() - t0)
    return ToolResult(name, args, True, content=out, seconds=time.perf_counter() - t0)


def numbers_in(obj: Any) -> list[float]:
    """Every number in a JSON-like value or text (for the guardrail)."""
    if isinstance(obj, bool):
        return []
    if isinstance(obj, int | float):
        return [float(obj)] if math.isfinite(float(obj)) else []
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in numbers_in(v)] + [x for k in obj for x in numbers_in(k) if isinstance(k, str)]
    if isinstance(obj, list | tuple):
        return [x for v in obj for x in numbers_in(v)]
    if isinstance(obj, str):
        return [float(m) for m in re.findall(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?", obj)]
    return []
