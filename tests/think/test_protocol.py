import pytest

from sherman.think.protocol import (
    Answer,
    ClockTrace,
    Fork,
    FormatError,
    Join,
    Malformed,
    Return,
    StreamParser,
    Think,
    check_answer,
    check_fork,
    check_join,
    concurrency,
    critical_path,
    parse_all,
    thinking_reward,
)


def actions(events):
    return [e for e in events if not isinstance(e, Think)]


def text_of(events):
    return "".join(e.text for e in events if isinstance(e, Think))


# ------------------------------------------------------------------ parser


def test_parser_plain_stream():
    s = "plan <FORK-1>3+4</FORK-1> more <FORK-2>5*6</FORK-2><JOIN-1><JOIN-2><ANSWER>7,30</ANSWER>"
    ev = parse_all(s)
    assert actions(ev) == [Fork(1, "3+4"), Fork(2, "5*6"), Join(1), Join(2), Answer("7,30")]
    assert text_of(ev) == "plan  more "


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7])
def test_parser_tags_split_across_chunks(chunk):
    s = "a<FORK-12>q q</FORK-12>b<JOIN-12>c<ANSWER>x</ANSWER>"
    ev = parse_all(s, chunk=chunk)
    assert actions(ev) == [Fork(12, "q q"), Join(12), Answer("x")]
    assert text_of(ev) == "abc"


def test_parser_literal_angle_brackets_are_text():
    ev = parse_all("1<2 and <FOO> and <FORK-x> <JOIN-> </b><ANSWER>ok</ANSWER>", chunk=1)
    assert actions(ev) == [Answer("ok")]
    assert text_of(ev) == "1<2 and <FOO> and <FORK-x> <JOIN-> </b>"


def test_parser_nested_fork_is_malformed_and_outer_still_closes():
    ev = parse_all("<FORK-1>a<FORK-2>b</FORK-2>c</FORK-1>")
    assert ev == [Malformed("tag <FORK-2> inside open <FORK>", "<FORK-2>"), Malformed("tag </FORK-2> inside open <FORK>", "</FORK-2>"), Fork(1, "abc")]


def test_parser_unclosed_and_stray():
    ev = parse_all("x</FORK-3>y<FORK-4>never closed")
    assert ev[0] == Think("x")
    assert ev[1] == Malformed("stray closing tag </FORK-3>", "</FORK-3>")
    assert ev[2] == Think("y")
    assert ev[3] == Malformed("unclosed <FORK-4>", "never closed")


def test_parser_partial_tag_at_end_is_text():
    p = StreamParser()
    assert p.feed("abc<FOR") == [Think("abc")]
    assert p.close() == [Think("<FOR")]


def test_parser_stops_after_answer():
    p = StreamParser()
    ev = p.feed("<ANSWER>1</ANSWER><FORK-1>z</FORK-1>")
    assert ev == [Answer("1")]
    assert p.done and p.feed("more") == [] and p.close() == []


def test_worker_role():
    ev = parse_all("think<FORK-1>x</FORK-1>t<RETURN>take</RETURN>", role="worker", chunk=4)
    assert actions(ev) == [Malformed("tag <FORK-1> not allowed for the worker", "<FORK-1>"),
                           Malformed("tag </FORK-1> not allowed for the worker", "</FORK-1>"), Return("take")]
    assert actions(parse_all("<RETURN>half", role="worker")) == [Malformed("unclosed <RETURN>", "half")]
    with pytest.raises(ValueError):
        StreamParser("boss")


@pytest.mark.parametrize("garbage", ["<<<<>>>>", "<FORK-99999999>", "</ANSWER>", "<JOIN-1x>", "\x00<\n>", "<ANSWER><ANSWER></ANSWER>"])
def test_parser_garbage_never_raises(garbage):
    ev = parse_all(garbage, chunk=1)
    assert all(isinstance(e, (Think, Fork, Join, Answer, Return, Malformed)) for e in ev)


# ------------------------------------------------------------------ validators


def test_validators():
    assert check_fork(1, set(), 0, capacity=3) is None
    assert check_fork(1, {1}, 0, capacity=3).kind == "duplicate_fork"
    assert check_fork(3, {1, 2}, 2, capacity=3).kind == "pool_full"  # c - 1 = 2 workers already active
    assert check_join(2, {1}, set()).kind == "join_unknown"
    assert check_join(1, {1}, {1}).kind == "join_unknown"
    assert check_join(1, {1}, set()) is None
    assert [e.kind for e in check_answer(False, {1, 2}, {1})] == ["no_answer", "unjoined_worker"]
    assert check_answer(True, {1}, {1}) == []


# ------------------------------------------------------------------ clock


def test_clock_join_of_finished_worker():
    # organizer: 3 tokens, fork 1 (worker decodes 2 -> finishes at 5), 4 tokens (clock 7), join: no wait, 2 tokens
    tr = ClockTrace().decode(3).fork(1).decode(4).join(1).decode(2)
    tr.workers[1] = 2
    r = critical_path(tr)
    assert (r.latency, r.wait, r.org_tokens, r.total_tokens) == (9, 0, 9, 11)
    assert r.fork_at == {1: 3} and r.finish_at == {1: 5} and r.join_at == {1: 7}
    # eta: organizer active 9 steps, worker 2 steps -> 11 / 9
    assert concurrency(tr) == pytest.approx(11 / 9)


def test_clock_join_that_waits():
    # fork at 2, worker decodes 10 -> finishes at 12; organizer at 5 joins -> waits 7 -> clock 12; then 3 tokens -> 15
    tr = ClockTrace().decode(2).fork(1).decode(3).join(1).decode(3)
    tr.workers[1] = 10
    r = critical_path(tr)
    assert (r.latency, r.wait, r.total_tokens) == (15, 7, 18)
    # active agent-steps in (0, 15]: organizer 8, worker 10 -> eta = 18 / 15
    assert concurrency(tr) == pytest.approx(18 / 15)


def test_clock_two_workers_critical_path_through_slowest():
    # forks at 1 and 2; worker 1 decodes 4 (finish 5), worker 2 decodes 9 (finish 11); joins at clock 3
    tr = ClockTrace().decode(1).fork(1).decode(1).fork(2).decode(1).join(1).join(2).decode(1)
    tr.workers.update({1: 4, 2: 9})
    r = critical_path(tr)
    assert r.join_at == {1: 5, 2: 11}
    assert r.latency == 12
    assert concurrency(tr) == pytest.approx((4 + 4 + 9) / 12)


def test_clock_unjoined_worker_is_cut_at_the_answer():
    # worker forked at 1 decodes 100 but is never joined; organizer answers at 5 -> latency 5, eta counts (1, 5]
    tr = ClockTrace().decode(1).fork(1).decode(4)
    tr.workers[1] = 100
    r = critical_path(tr)
    assert r.latency == 5 and r.total_tokens == 105
    assert concurrency(tr) == pytest.approx((5 + 4) / 5)


def test_clock_pool_overflow_fork_refused_costs_nothing():
    # a refused fork (pool full) has no worker: the engine never registers it in `workers`
    tr = ClockTrace().decode(2).fork(1).fork(2).decode(2).join(1).join(2)
    tr.workers[1] = 3
    r = critical_path(tr)
    assert r.fork_at == {1: 2} and r.latency == 5 and r.join_at == {1: 5, 2: 5}


def test_clock_insert_cost():
    tr = ClockTrace().decode(2).fork(1).join(1, n_inserted=4).decode(1)
    tr.workers[1] = 3
    assert critical_path(tr).latency == 6  # 2 + wait 3 + 1
    assert critical_path(tr, insert_cost=0.5).latency == 8  # + 0.5 * 4


def test_clock_no_fork_eta_is_one():
    tr = ClockTrace().decode(7)
    assert critical_path(tr).latency == 7 and concurrency(tr) == 1.0
    assert concurrency(ClockTrace()) == 0.0


# ------------------------------------------------------------------ reward


@pytest.mark.parametrize("kind", ["duplicate_fork", "pool_full", "join_unknown", "no_answer", "unjoined_worker", "malformed"])
def test_reward_each_format_error_gets_the_penalty(kind):
    assert thinking_reward([FormatError(kind)], accuracy=1.0, eta=3.0, capacity=4, lam=0.5, tau=0.5, format_penalty=-1.0) == -1.0


def test_reward_values():
    # eta / c = 2 / 4 = 0.5 >= tau = 0.25 -> capped: 1 + 0.5 * 1
    assert thinking_reward([], accuracy=1.0, eta=2.0, capacity=4, lam=0.5, tau=0.25) == pytest.approx(1.5)
    # eta / c = 1 / 4 = 0.25 < tau = 0.5 -> 0.5 + 0.2 * 0.25 / 0.5 = 0.6
    assert thinking_reward([], accuracy=0.5, eta=1.0, capacity=4, lam=0.2, tau=0.5) == pytest.approx(0.6)


def test_protocol_tags_are_one_token_each_in_every_tokenizer(tmp_path):
    """Char tokenizer, a trained BPE and the exported HF tokenizer.json all encode each tag as one id."""
    from tokenizers import Tokenizer

    from sherman.core.tokenizer import hf_tokenizer_files, train_bpe
    from sherman.tasks.countdown import Countdown
    from sherman.think.protocol import protocol_specials
    from sherman.think.train import SPECIALS, make_tokenizer

    tags = protocol_specials(8)
    assert len(set(tags)) == len(tags) == 3 + 4 + 4 * 8 and set(tags) <= set(SPECIALS)
    char = make_tokenizer(Countdown(n_solutions=2))
    bpe = train_bpe(["3*7=21,21+5=26<RETURN>3*7+5</RETURN> <FORK-1>*1</FORK-1>"] * 20, 300, specials=("<pad>", "<bos>", "<eos>", *tags))
    for tok in (char, bpe):
        hf = Tokenizer.from_str(hf_tokenizer_files(tok)["tokenizer.json"])
        for t in tags:
            assert len(tok.encode(t)) == 1, (tok, t)
            assert hf.encode(t, add_special_tokens=False).ids == tok.encode(t), (tok, t)
        text = "1,2>3|1:<ORG><FORK-2>+1</FORK-2><JOIN-2>"
        assert tok.encode("<JOIN-2>") == [tok.token_id("<JOIN-2>")] and tok.decode(tok.encode(text), skip_special=False) == text
