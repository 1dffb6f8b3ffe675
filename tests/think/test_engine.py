import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sherman.think.backends import ScriptedBackend
from sherman.think.engine import AsyncThinkEngine, ThinkConfig

JOIN_RE = re.compile(r"(<JOIN-(\d+)>).*?</JOIN-\2>", re.S)


def make_script(org_text: str, workers: dict[str, str], default_worker: str = "<RETURN></RETURN>"):
    """Organizer replays org_text from where it stopped (inserted join text removed); workers by query."""

    def script(prompt: str) -> str:
        if "<ORG>" in prompt:
            done = JOIN_RE.sub(r"\1", prompt.split("<ORG>", 1)[1])
            assert org_text.startswith(done), (done, org_text)
            return org_text[len(done) :]
        return workers.get(prompt.split("<WORK>")[1], default_worker)

    return script


def run(org_text, workers, **cfg):
    eng = AsyncThinkEngine(ScriptedBackend(make_script(org_text, workers)), ThinkConfig(**cfg))
    return eng.run_sync("Q")


def test_engine_fork_join_answer_and_clock():
    # organizer chars: "ab" (2) + "<FORK-1>x</FORK-1>" (18) -> fork at 20; worker "<RETURN>7</RETURN>" = 18 chars -> finish 38
    # organizer continues "c<JOIN-1>" (9) -> clock 29 -> waits to 38; then "<ANSWER>7</ANSWER>" (18) -> 56
    org = "ab<FORK-1>x</FORK-1>c<JOIN-1><ANSWER>7</ANSWER>"
    r = run(org, {"x": "<RETURN>7</RETURN>"})
    assert r.errors == [] and r.answer == "7"
    assert r.workers[1].fork_step == 20 and r.workers[1].tokens == 18 and r.workers[1].join_step == 38
    assert r.org_tokens == 47 and r.latency == 38 + 18 and r.total_tokens == 65
    assert r.eta == pytest.approx(65 / 56)
    assert r.organizer.generated == "ab<FORK-1>x</FORK-1>c<JOIN-1>7</JOIN-1><ANSWER>7</ANSWER>"
    steps = [t.step for t in r.tokens if t.agent == "w1"]
    assert steps == list(range(21, 39))
    assert "FORK-1 @20" in r.tree()


def test_engine_join_of_finished_worker_does_not_wait():
    org = "<FORK-1>x</FORK-1>" + "." * 40 + "<JOIN-1><ANSWER>ok</ANSWER>"
    r = run(org, {"x": "<RETURN>r</RETURN>"})
    assert r.errors == [] and r.latency == r.org_tokens and r.workers[1].join_step == 18 + 40 + 8


@pytest.mark.parametrize(
    "org,kind",
    [
        ("<FORK-1>a</FORK-1><FORK-1>b</FORK-1><JOIN-1><ANSWER>1</ANSWER>", "duplicate_fork"),
        ("<FORK-1>a</FORK-1><FORK-2>b</FORK-2><JOIN-1><JOIN-2><ANSWER>1</ANSWER>", "pool_full"),
        ("<JOIN-3><ANSWER>1</ANSWER>", "join_unknown"),
        ("<FORK-1>a</FORK-1><JOIN-1>thinking forever", "no_answer"),
        ("<FORK-1>a</FORK-1><ANSWER>1</ANSWER>", "unjoined_worker"),
        ("<FORK-1>a<JOIN-1></FORK-1><JOIN-1><ANSWER>1</ANSWER>", "malformed"),
    ],
)
def test_engine_records_each_format_error(org, kind):
    r = run(org, {"a": "<RETURN>A</RETURN>", "b": "<RETURN>B</RETURN>"}, capacity=2)
    assert kind in [e.kind for e in r.errors]


def test_engine_worker_without_return_and_caps():
    r = run("<FORK-1>a</FORK-1><JOIN-1><ANSWER>1</ANSWER>", {"a": "z" * 500}, max_worker_tokens=30)
    assert [e.kind for e in r.errors] == ["worker_no_return"]
    assert r.workers[1].tokens == 30 and r.latency == 18 + 30 + 18
    r = run("x" * 1000, {}, max_org_tokens=50)
    assert r.org_tokens == 50 and [e.kind for e in r.errors] == ["no_answer"]


def test_engine_stop_on_format_error():
    r = run("<JOIN-3>" + "." * 100 + "<ANSWER>1</ANSWER>", {}, stop_on_format_error=True)
    assert r.org_tokens == 8 and r.answer is None


TAGS = ["<FORK-1>", "</FORK-1>", "<FORK-2>", "</FORK-2>", "<JOIN-1>", "<JOIN-2>", "<JOIN-9>", "<ANSWER>", "</ANSWER>",
        "<RETURN>", "</RETURN>", "</JOIN-1>", "<", ">", "-", "x", "1", " ", "<FORK-", "<JOI"]
soup = st.lists(st.one_of(st.sampled_from(TAGS), st.text(max_size=4)), max_size=40).map("".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(org=soup, w=st.lists(soup, min_size=1, max_size=3), chunk=st.integers(1, 4), cap=st.integers(1, 4))
def test_property_engine_terminates_never_raises_and_latency_bounds(org, w, chunk, cap):
    def script(prompt):
        if "<ORG>" in prompt:
            done = JOIN_RE.sub(r"\1", prompt.split("<ORG>", 1)[1])
            return org[len(done) :] if org.startswith(done) else ""
        return w[len(prompt) % len(w)]

    cfg = ThinkConfig(capacity=cap, max_org_tokens=60, max_worker_tokens=25)
    r = AsyncThinkEngine(ScriptedBackend(script, chunk=chunk), cfg).run_sync("Q")
    assert r.org_tokens <= cfg.max_org_tokens
    assert all(wi.tokens <= cfg.max_worker_tokens for wi in r.workers.values())
    assert r.org_tokens <= r.latency <= r.total_tokens
    assert len(r.tokens) == r.total_tokens
    assert (r.answer is None) == ("no_answer" in [e.kind for e in r.errors])
    assert r.eta >= 0 and (r.latency == 0 or r.eta <= cap)
