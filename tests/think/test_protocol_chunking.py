"""The AsyncThink tag parser is independent of chunking, takes ASCII digits only, and is linear in its input (issue 13)."""

from hypothesis import given, settings
from hypothesis import strategies as st

from sherman.think.protocol import MAX_TAG_LEN, Fork, Join, Malformed, StreamParser, Think, parse_all


def merged(events):
    """Events with adjacent Think pieces joined (streaming may split plain text anywhere; nothing else may differ)."""
    out = []
    for e in events:
        if isinstance(e, Think) and out and isinstance(out[-1], Think):
            out[-1] = Think(out[-1].text + e.text)
        else:
            out.append(e)
    return out


def parse_chunks(text, cuts, role="organizer"):
    p = StreamParser(role)
    ev, prev = [], 0
    for c in sorted(set(cuts)) + [len(text)]:
        ev += p.feed(text[prev:c])
        prev = c
    return ev + p.close()


# pieces that make tags, near-tags and the Unicode digits that used to slip through (Arabic-Indic, fullwidth, Devanagari)
PIECES = ["<", ">", "/", "FORK", "JOIN", "ANSWER", "RETURN", "-", "1", "2", "07", "1234567", "\u0661", "\uff12", "\u0967", "a", " ", "x<y",
          "<FORK-1>", "</FORK-1>", "<JOIN-1>", "<ANSWER>", "</ANSWER>", "<RETURN>", "</RETURN>", "<FORK-\u0661>", "<JOIN-\uff12>"]  # fmt: skip
texts = st.lists(st.sampled_from(PIECES), max_size=40).map("".join)


@settings(max_examples=400, deadline=None)
@given(text=texts, data=st.data(), role=st.sampled_from(["organizer", "worker"]))
def test_every_chunking_parses_identically(text, data, role):
    cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=12))
    whole = merged(parse_all(text, role))
    assert merged(parse_chunks(text, cuts, role)) == whole
    assert merged(parse_all(text, role, chunk=1)) == whole


def test_non_ascii_digits_are_not_indices_whole_or_split():
    for tag in ["<FORK-\u0661>q</FORK-\u0661>", "<JOIN-\uff12>", "<FORK-1\u0967>q</FORK-1\u0967>"]:
        for chunk in (0, 1, 3):
            ev = parse_all(tag, chunk=chunk)
            assert not any(isinstance(e, (Fork, Join)) for e in ev), (tag, chunk, ev)
            assert "".join(e.text for e in ev if isinstance(e, Think)) == tag  # plain text, character for character
    assert parse_all("<FORK-12>q</FORK-12><JOIN-12>") == [Fork(12, "q"), Join(12)]


def test_feed_is_linear_in_the_input():
    """Deterministic, no timing: the parser never keeps back more than one partial tag between feeds, and the
    characters it examines (its own count, each character of `buf + chunk` once per feed) stay within the input
    size plus one tag per feed. The old parser kept and re-scanned the whole buffer at every '<'."""
    unit = "a<b<FORK-1>q<<c</FORK-1>" + "<JOIN-1>" + "<" * 5 + "<FORK-"
    text = unit * 20_000  # ~0.8 MB of tags, literal '<' and partial tags
    for chunk in (1, 7, 4096, len(text)):
        p = StreamParser()
        n_feeds, seen = 0, 0
        for i in range(0, len(text), chunk):
            ev = p.feed(text[i : i + chunk])
            n_feeds += 1
            seen += sum(isinstance(e, Fork) for e in ev)
            assert len(p.buf) < MAX_TAG_LEN
        assert p.scanned <= len(text) + n_feeds * MAX_TAG_LEN
        p.close()
        assert seen == 20_000  # every fork found whatever the chunking
    p = StreamParser()
    one = p.feed("<" * 300_000)  # one feed, all literal '<' (the old worst case)
    assert one == [Think("<" * 299_999)] and p.buf == "<"  # the last '<' may still start a tag
    assert p.close() == [Think("<")]


def test_garbage_inside_fork_body_is_linear_and_kept():
    text = "<FORK-1>" + "x<JOIN-1>" * 50_000 + "</FORK-1>"
    ev = parse_all(text)
    assert sum(isinstance(e, Malformed) for e in ev) == 50_000
    assert ev[-1] == Fork(1, "x" * 50_000)
