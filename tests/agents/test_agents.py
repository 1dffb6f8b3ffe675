"""Tools' schemas, knowledge base, memory and the agents against the scripted backend."""

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sherman.agents import agents as ag
from sherman.agents.knowledge import KnowledgeBase
from sherman.agents.memory import Memory
from sherman.agents.scripted import expert_backend, expert_script
from sherman.agents.tools import CommEnv, Scenario, ToolResult, call_tool, openai_tools, parse_scenario
from sherman.think.backends import ScriptedBackend


@pytest.fixture(scope="module")
def kb():
    return KnowledgeBase()


def _env(**kw) -> CommEnv:
    base = dict(users=6, antennas=8, power_dbm=20.0, min_rate=2.0, cell_radius_m=600.0, seed=3)
    base.update(kw)
    return CommEnv(Scenario(**base))


# ---------------------------------------------------------------------------------------------- tools


def test_parse_scenario():
    sc = parse_scenario("4 users, 8 antennas, 30 dBm, min rate 1 bit/s/Hz, rician 6 dB")
    assert (sc.users, sc.antennas, sc.power_dbm, sc.min_rate, sc.fading, sc.k_factor_db) == (4, 8, 30.0, 1.0, "rician", 6.0)
    with pytest.raises(ValueError, match="could not read antennas"):
        parse_scenario("4 users at 30 dBm")
    with pytest.raises(ValueError, match="users must be in"):
        parse_scenario("0 users, 8 antennas, 30 dBm")


@pytest.mark.parametrize(
    "name,args,needle",
    [
        ("beamform", {}, "unknown tool 'beamform'"),
        ("evaluate", {"precoder": "zf", "power": 3}, "power: Input should be"),
        ("evaluate", {"precoder": 7, "power": "equal"}, "precoder"),
        ("outage", {"precoder": "zf", "power": "equal", "rate_threshold": -1.0}, "rate_threshold: Input should be greater than or equal to 0"),
        ("outage", {"precoder": "zf", "power": "equal", "rate_threshold": 1.0, "trials": 10**6}, "trials: Input should be less than or equal to 5000"),
        ("evaluate", {"precoder": "zf", "power": "equal", "extra": 1}, "extra: Extra inputs are not permitted"),
        ("evaluate", "zf", "must be a JSON object"),
    ],
)
def test_malformed_tool_calls_return_errors(name, args, needle):
    res = call_tool(_env(), name, args)
    assert not res.ok and needle in res.error
    assert json.loads(res.text()) == {"error": res.error}


def test_zf_with_too_few_antennas_is_a_tool_error():
    res = call_tool(_env(users=6, antennas=4), "evaluate", {"precoder": "zf", "power": "equal"})
    assert not res.ok and "at least as many antennas" in res.error


def test_evaluate_metrics_consistent():
    env = _env()
    r = call_tool(env, "evaluate", {"precoder": "rzf", "power": "max_min"}).content
    assert r["sum_rate"] == pytest.approx(sum(r["rates"]), abs=1e-3)
    assert r["min_rate"] == pytest.approx(min(r["rates"]), abs=1e-4)
    assert r["feasible"] == (r["violations"] == 0) and r["feasible"] == (r["min_rate"] >= 2.0)
    o = env.oracle()
    assert o["score"] >= r["score"] - 1e-9
    assert call_tool(env, "outage", {"precoder": "zf", "power": "equal", "rate_threshold": 20.0, "trials": 5}).content["outage"] == 1.0


def test_openai_tools_schema():
    tools = {t["function"]["name"]: t["function"] for t in openai_tools()}
    assert set(tools) == {"describe_scenario", "evaluate", "outage", "wmmse"}
    assert tools["evaluate"]["parameters"]["properties"]["power"]["enum"] == ["equal", "water_filling", "max_min"]


# ---------------------------------------------------------------------------------------------- knowledge


@pytest.mark.parametrize(
    "question,pid",
    [
        ("which precoder removes inter-user interference completely", "downlink#precoder-zf"),
        ("how is power allocated with a water level", "downlink#power-water-filling"),
        ("what is the thermal noise floor in dBm per Hz", "downlink#noise-and-link-budget"),
        ("best precoder in the noise-limited low SNR regime", "downlink#precoder-mrt"),
        ("the weakest user must reach a minimum rate: which power control", "downlink#power-max-min"),
        ("3GPP urban macro path loss formula and shadowing", "downlink#pathloss-3gpp"),
        ("weighted sum rate benchmark algorithm", "downlink#wmmse"),
        ("regularised zero forcing MMSE precoder", "downlink#precoder-rzf"),
        ("line of sight K-factor fading", "downlink#fading-models"),
    ],
)
def test_retrieval_top3(kb, question, pid):
    assert pid in [p.id for p in kb.search(question, 3)]


def test_empty_kb_dir_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no markdown files"):
        KnowledgeBase(tmp_path)


# ---------------------------------------------------------------------------------------------- memory


def test_memory_short_and_long_term(tmp_path):
    m = Memory(tmp_path / "mem.sqlite")
    m.record("e1", "a", "evaluate", {"precoder": "zf"}, {"score": 1.0}, 1.0)
    m.record("e1", "a", "evaluate", {"precoder": "rzf"}, {"score": 2.0}, 2.0)
    assert [r["step"] for r in m.episode("e1")] == [0, 1]
    f = {"users": 4, "antennas": 8, "fading": "rayleigh", "mean_snr_db": 23.0, "min_rate": 1.0}
    assert m.remember(f, {"precoder": "zf", "power": "equal"}, 10.0)
    assert not m.remember(f, {"precoder": "mrt", "power": "equal"}, 5.0)  # worse: kept the better one
    assert m.recall(dict(f, mean_snr_db=27.0))["config"]["precoder"] == "zf"  # same 10 dB bucket
    assert m.recall(dict(f, mean_snr_db=35.0)) is None


def test_memory_survives_sigkill(tmp_path):
    path = tmp_path / "mem.sqlite"
    code = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path.cwd())!r})
        from sherman.agents.memory import Memory
        m = Memory({str(path)!r})
        for i in range(50):
            m.record("ep", "agent", "evaluate", {{"i": i}}, {{"score": i}}, float(i))
        print("committed", flush=True)
        m.conn.execute("BEGIN")
        m.conn.execute("INSERT INTO short_term VALUES ('ep', 999, 'a', 't', '{{}}', '{{}}', 0)")  # uncommitted
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    assert p.returncode == -9 and "committed" in p.stdout
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    steps = [r[0] for r in conn.execute("SELECT step FROM short_term ORDER BY step")]
    assert steps == list(range(50))  # every committed record, not the uncommitted one
    assert len(Memory(path).episode("ep")) == 50


# ---------------------------------------------------------------------------------------------- agents


def test_single_agent_messages_and_answer(kb):
    env = _env()
    ep = ag.run_episode("single", expert_backend(), "6 users, 8 antennas, 20 dBm, min rate 2 bit/s/Hz", env, kb, Memory())
    tools = [c.name for c in ep.calls]
    assert tools[0] == "describe_scenario" and "evaluate" in tools
    assert ep.best is not None and ep.best["feasible"]
    assert ep.ungrounded == [] and str(ep.best["sum_rate"]) in ep.answer
    assert ep.tokens == ep.critical_tokens > 0


def test_multi_agent_stages(kb):
    env = _env()
    mem = Memory()
    ep = ag.run_episode("multi", expert_backend(), "6 users, 8 antennas, 20 dBm, min rate 2 bit/s/Hz", env, kb, mem)
    agents = [m.agent for m in ep.messages]
    for stage in ("retriever", "condenser", "inference", "planning-organizer", "planner-1", "planner-2", "planner-3", "evaluator", "reflexion", "refinement"):
        assert stage in agents, stage
    org = next(m.text for m in ep.messages if m.agent == "planning-organizer")
    assert "<FORK-1>" in org and "<JOIN-3>" in org and "<ANSWER>" in org
    assert ep.citations and all(c.startswith("downlink#") for c in ep.citations)
    assert ep.best["score"] >= max(c.content["score"] for c in ep.calls if c.ok and "score" in c.content) - 1e-12
    assert ep.ungrounded == []
    # the planners ran concurrently: the planning stage's critical path is below its total tokens
    assert ep.critical_tokens < ep.tokens
    # the episode is in short-term memory and its best configuration in long-term memory
    assert mem.count()[0] == len(ep.calls) and mem.recall(ep.scenario)["config"]["power"] == ep.best["power"]


def test_malformed_calls_reach_the_agent_and_do_not_crash(kb):
    turns = iter([
        '<tool>{"name": "beamform", "args": {}}</tool>',
        '<tool>{"name": "evaluate", "args": {"precoder": "zf", "power": 5}}</tool>',
        '<tool>{"name": "outage", "args": {"precoder": "zf", "power": "equal", "rate_threshold": 99.0}}</tool>',
        "<tool>{not json}</tool>",
        '<tool>{"name": "evaluate", "args": {"precoder": "rzf", "power": "equal"}}</tool>',
        "<answer>done</answer>",
    ])
    seen = []

    def script(prompt):
        seen.append(prompt)
        return next(turns)

    ep = ag.run_episode("single", ScriptedBackend(script, chunk=8), "6 users, 8 antennas, 20 dBm", _env(), kb, Memory())
    last = seen[-1]
    assert "unknown tool 'beamform'" in last and "power: Input should be" in last
    assert "rate_threshold: Input should be less than or equal to 20" in last and "not valid JSON" in last
    assert ep.best["precoder"] == "rzf" and sum(not c.ok for c in ep.calls) == 4


def test_guardrail_catches_made_up_number():
    calls = [ToolResult("evaluate", {}, True, {"sum_rate": 22.3573, "min_rate": 3.7262})]
    q = "6 users, 8 antennas, 20 dBm, min rate 2 bit/s/Hz"
    assert ag.guard_numbers("sum rate 22.36 and min rate 3.7262 for 6 users", calls, q) == []  # rounding of a logged value is fine
    assert ag.guard_numbers("sum rate 25.1 bit/s/Hz", calls, q) == [25.1]
    assert ag.guard_numbers("sum rate 22.4", calls, q) == []  # 22.3573 printed at one decimal
    assert ag.guard_numbers("sum rate 22.5", calls, q) == [22.5]


def test_guardrail_flags_an_agent_that_invents_numbers(kb):
    turns = iter(['<tool>{"name": "evaluate", "args": {"precoder": "rzf", "power": "equal"}}</tool>', "<answer>sum rate 99.99 bit/s/Hz</answer>"])
    ep = ag.run_episode("single", ScriptedBackend(lambda p: next(turns), chunk=8), "6 users, 8 antennas, 20 dBm", _env(), kb, Memory())
    assert ep.ungrounded == [99.99]


def test_scripted_expert_roles():
    assert expert_script("You configure ...\nTask: x\n").startswith('<tool>{"name": "describe_scenario"')
    assert expert_script("Reflect on ...\nMin rate: 1\nEvaluations: " + json.dumps([{"precoder": "zf", "power": "water_filling", "score": -1.0, "min_rate": 0.2, "violations": 2}]) + "\nFix:") == json.dumps({"precoder": "zf", "power": "max_min"})


def test_experiment_smoke(tmp_path):
    from sherman.experiments import agentic6g

    res = agentic6g.run("smoke", tmp_path)
    assert (tmp_path / "results.json").exists() and (tmp_path / "agentic6g.png").exists()
    assert res["rows"][0]["claim"].startswith("precondition")
    assert res["verdict"] in ("reproduced", "partly", "not reproduced", "not testable here")
    assert all(r["verdict"] in ("reproduced", "partly", "not reproduced", "not testable here") for r in res["rows"])
    arms = {"fixed", "single", "parallel", "multi", "single+planner", "parallel+planner", "multi+planner"}
    assert set(res["metrics"]["mean_success"]) == arms
    assert (tmp_path / "planner-seed0" / "tokenizer.json").exists() and (tmp_path / "planner-seed1" / "tokenizer.json").exists()


def test_cli_agent_and_bench(capsys):
    from sherman.cli import main

    assert main(["agent", "4 users, 8 antennas, 30 dBm, min rate 1 bit/s/Hz", "--arm", "multi"]) == 0
    out = capsys.readouterr().out
    for section in ("== plan", "== tool calls", "== evaluation", "== answer", "planning-organizer"):
        assert section in out
    assert main(["agent", "bench", "--scenarios", "2"]) == 0
    assert "multi" in capsys.readouterr().out
    assert main(["agent", "4 users"]) == 2
    assert "could not read antennas" in capsys.readouterr().err


def test_guardrail_ignores_citation_ids():
    calls = [ToolResult("evaluate", {}, True, {"sum_rate": 22.3573})]
    assert ag.guard_numbers("sum rate 22.3573 [downlink#pathloss-3gpp, downlink#precoder-zf]", calls, "") == []
    assert ag.guard_numbers("sum rate 22.3573 and 3 gpp", calls, "") == [3.0]


def test_agentic6g_seed_stages_are_stored_reused_and_recomputed_when_stale(tmp_path, monkeypatch):
    import json

    from sherman.experiments import agentic6g

    st = tmp_path / "stages"
    first = agentic6g.run("smoke", tmp_path / "a", stage_dir=st)
    files = sorted(p.name for p in (st / "smoke").iterdir())
    assert files == ["seed0.json", "seed1.json"]
    calls = []
    real = agentic6g.run_seed
    monkeypatch.setattr(agentic6g, "run_seed", lambda *a, **k: calls.append(1) or real(*a, **k))
    second = agentic6g.run("smoke", tmp_path / "b", stage_dir=st)
    assert calls == [] and second["rows"] == first["rows"]
    rec = json.loads((st / "smoke" / "seed1.json").read_text())
    (st / "smoke" / "seed1.json").write_text(json.dumps({**rec, "key": "0" * 64}))  # stale: recomputed
    third = agentic6g.run("smoke", tmp_path / "c", stage_dir=st)
    assert calls == [1] and third["rows"] == first["rows"]
