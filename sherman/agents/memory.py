"""Short- and long-term memory of the agentic 6G system, in SQLite (standard library).

Short-term memory is one episode's tool calls and scores (CommLLM's reflexion agent reads it for fine fixes);
long-term memory maps scenario features to the best configuration found and its score (read first on a new
scenario, and by the refinement agent for coarse fixes). Every write is its own transaction (`with conn:`) in WAL
mode, so a crash loses nothing that was committed.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS short_term (
    episode TEXT NOT NULL, step INTEGER NOT NULL, agent TEXT NOT NULL, tool TEXT NOT NULL,
    args TEXT NOT NULL, result TEXT NOT NULL, score REAL, PRIMARY KEY (episode, step));
CREATE TABLE IF NOT EXISTS long_term (
    key TEXT PRIMARY KEY, features TEXT NOT NULL, config TEXT NOT NULL, score REAL NOT NULL);
"""

FEATURE_KEYS = ("users", "antennas", "fading", "snr_bucket", "min_rate")


def scenario_key(features: dict[str, Any]) -> str:
    """Coarse key: users, antennas, fading, mean SNR in 10 dB buckets, min rate."""
    f = dict(features)
    f["snr_bucket"] = int(f["mean_snr_db"] // 10)
    return json.dumps({k: f[k] for k in FEATURE_KEYS}, sort_keys=True)


class Memory:
    def __init__(self, path: str | Path = ":memory:"):
        self.path = str(path)
        self.conn = sqlite3.connect(self.path, isolation_level=None if self.path == ":memory:" else "DEFERRED")
        if self.path != ":memory:":
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
        with self.conn:
            self.conn.executescript(_SCHEMA)

    def close(self) -> None:
        self.conn.close()

    # short-term --------------------------------------------------------------------------------
    def record(self, episode: str, agent: str, tool: str, args: dict, result: dict, score: float | None) -> int:
        with self.conn:
            (step,) = self.conn.execute("SELECT COUNT(*) FROM short_term WHERE episode = ?", (episode,)).fetchone()
            self.conn.execute(
                "INSERT INTO short_term VALUES (?, ?, ?, ?, ?, ?, ?)",
                (episode, step, agent, tool, json.dumps(args, sort_keys=True), json.dumps(result, sort_keys=True), score),
            )
        return step

    def episode(self, episode: str) -> list[dict[str, Any]]:
        rows = self.conn.execute("SELECT step, agent, tool, args, result, score FROM short_term WHERE episode = ? ORDER BY step", (episode,))
        return [{"step": s, "agent": a, "tool": t, "args": json.loads(x), "result": json.loads(r), "score": sc} for s, a, t, x, r, sc in rows]

    # long-term ---------------------------------------------------------------------------------
    def remember(self, features: dict[str, Any], config: dict[str, Any], score: float) -> bool:
        """Store config for this scenario class if it beats what is stored; returns whether it was written."""
        key = scenario_key(features)
        with self.conn:
            row = self.conn.execute("SELECT score FROM long_term WHERE key = ?", (key,)).fetchone()
            if row is not None and row[0] >= score:
                return False
            self.conn.execute("INSERT OR REPLACE INTO long_term VALUES (?, ?, ?, ?)", (key, json.dumps(features, sort_keys=True), json.dumps(config, sort_keys=True), score))
        return True

    def recall(self, features: dict[str, Any]) -> dict[str, Any] | None:
        """Best stored configuration for the same scenario class, or None."""
        row = self.conn.execute("SELECT config, score FROM long_term WHERE key = ?", (scenario_key(features),)).fetchone()
        return None if row is None else {"config": json.loads(row[0]), "score": row[1]}

    def count(self) -> tuple[int, int]:
        return (self.conn.execute("SELECT COUNT(*) FROM short_term").fetchone()[0], self.conn.execute("SELECT COUNT(*) FROM long_term").fetchone()[0])
