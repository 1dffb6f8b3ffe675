"""A document corpus with known latent quality, for measuring data efficacy (DELT, arXiv 2506.21545, Sec. 5).

The paper scores web-scale pre-training corpora; at tiny scale we need a corpus whose quality is known so
that the effect of scoring, selection and ordering can be measured. `make_corpus` builds one from a seeded
"world" of entities with attributes (city, colour, pet) and a friend relation:

* clean documents state true facts at three compositional difficulty levels:
  level 1 one fact per sentence ("bavo lives in rome."), level 2 two facts joined ("bavo lives in rome and
  likes red."), level 3 a two-hop composition ("kemi is the friend of bavo. the friend of bavo lives in rome.");
* noise documents: shuffled words of a clean document, random characters, repeated boilerplate;
* near-duplicates of clean documents (a few characters edited);
* a clean target set J (fresh documents from the same world) and a clean validation set;
* a downstream cloze / multiple-choice evaluation built from the same facts ("bavo lives in" -> " rome.")
  scored by normalized (per-character) loss of each option.

A user's own corpus is read with `read_jsonl` (one `{"text": ...}` object per line).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sherman.core.errors import ShermanError

ALPHABET = "abcdefghijklmnopqrstuvwxyz .,"
"""Every character a generated document can contain."""

CITIES = ("rome", "oslo", "lima", "kyiv", "cairo", "delhi", "paris", "tokyo")
COLORS = ("red", "blue", "green", "pink", "gray", "gold", "black", "white")
PETS = ("cat", "dog", "owl", "fox", "yak", "emu", "eel", "bat")
BOILERPLATE = ("click here to subscribe. ", "all rights reserved. ", "cookie policy. accept. ", "share this page. ")
NOISE_KINDS = ("shuffled", "random", "boilerplate")
"""Document kinds that carry no learnable fact (counted by the `noise removed` metric)."""


@dataclass
class CorpusConfig:
    n_entities: int = 24
    """Number of named entities in the world (each has a city, a colour, a pet and a friend)."""
    n_clean: int = 600
    """Clean training documents."""
    noise_frac: float = 0.3
    """Noise documents as a fraction of the clean count (split evenly over shuffled, random, boilerplate)."""
    dup_frac: float = 0.1
    """Near-duplicate documents as a fraction of the clean count."""
    level_probs: tuple[float, float, float] = (0.4, 0.35, 0.25)
    """Probability of compositional difficulty levels 1, 2, 3 for a clean document."""
    sentences: int = 2
    """Facts (sentences or compound sentences) per clean document."""
    n_target: int = 48
    """Documents in the clean target set J."""
    n_valid: int = 48
    """Documents in the clean validation set (loss curve / area under the curve)."""
    dup_edits: int = 2
    """Characters substituted in each near-duplicate."""


@dataclass
class Doc:
    text: str
    """The document."""
    kind: str
    """clean | near_dup | shuffled | random | boilerplate."""
    level: int = 0
    """Compositional difficulty 1..3 of a clean document (0 for noise)."""


@dataclass
class ClozeItem:
    prompt: str
    """Context, e.g. "bavo lives in"."""
    options: list[str]
    """Candidate continuations, e.g. [" rome.", " oslo.", ...]."""
    answer: int
    """Index of the correct option."""
    kind: str = "city"
    """Which relation is asked (city, color, pet, friend_city)."""


@dataclass
class Corpus:
    train: list[Doc]
    target: list[str]
    valid: list[str]
    cloze: list[ClozeItem]
    world: dict = field(default_factory=dict)

    def noise_mask(self) -> list[bool]:
        return [d.kind in NOISE_KINDS for d in self.train]


def _name(rng: random.Random) -> str:
    cons, vows = "bdfgklmnprstvz", "aeiou"
    return "".join(rng.choice(cons) + rng.choice(vows) for _ in range(2))


def make_world(n_entities: int, rng: random.Random) -> dict:
    """Entities with attributes: {name: {"city", "color", "pet", "friend"}}; names are distinct."""
    names: list[str] = []
    while len(names) < n_entities:
        n = _name(rng)
        if n not in names:
            names.append(n)
    world = {}
    for i, n in enumerate(names):
        friend = names[(i + 1 + rng.randrange(n_entities - 1)) % n_entities] if n_entities > 1 else n
        world[n] = {"city": rng.choice(CITIES), "color": rng.choice(COLORS), "pet": rng.choice(PETS), "friend": friend}
    return world


def fact_sentence(world: dict, e: str, level: int, rng: random.Random) -> str:
    """One true statement about entity `e` at compositional level 1, 2 or 3."""
    a = world[e]
    simple = [f"{e} lives in {a['city']}.", f"{e} likes {a['color']}.", f"{e} has a {a['pet']}."]
    if level == 1:
        return rng.choice(simple)
    if level == 2:
        i, j = rng.sample(range(3), 2)
        parts = [f"lives in {a['city']}", f"likes {a['color']}", f"has a {a['pet']}"]
        return f"{e} {parts[i]} and {parts[j]}."
    f = a["friend"]
    return f"{f} is the friend of {e}. the friend of {e} lives in {world[f]['city']}."


def clean_doc(world: dict, cfg: CorpusConfig, rng: random.Random) -> Doc:
    level = rng.choices((1, 2, 3), weights=cfg.level_probs)[0]
    ents = list(world)
    sents = [fact_sentence(world, rng.choice(ents), level if k == 0 else rng.randint(1, level), rng) for k in range(cfg.sentences)]
    return Doc(" ".join(sents), "clean", level)


def noise_doc(kind: str, clean: Doc, rng: random.Random) -> Doc:
    """A noise document of about the length of `clean`."""
    n = len(clean.text)
    if kind == "shuffled":
        words = clean.text.replace(".", "").split()
        rng.shuffle(words)
        return Doc(" ".join(words) + ".", kind)
    if kind == "random":
        return Doc("".join(rng.choice(ALPHABET) for _ in range(n)), kind)
    if kind == "boilerplate":
        phrase = rng.choice(BOILERPLATE)
        return Doc((phrase * (n // len(phrase) + 1))[:n].rstrip(), kind)
    raise ValueError(f"unknown noise kind {kind!r}")


def near_duplicate(doc: Doc, edits: int, rng: random.Random) -> Doc:
    chars = list(doc.text)
    for _ in range(edits):
        i = rng.randrange(len(chars))
        chars[i] = rng.choice(ALPHABET[:26])
    return Doc("".join(chars), "near_dup", doc.level)


def cloze_items(world: dict) -> list[ClozeItem]:
    """One multiple-choice item per entity and relation; options are every value of that relation."""
    items = []
    for e, a in world.items():
        items.append(ClozeItem(f"{e} lives in", [f" {c}." for c in CITIES], CITIES.index(a["city"]), "city"))
        items.append(ClozeItem(f"{e} likes", [f" {c}." for c in COLORS], COLORS.index(a["color"]), "color"))
        items.append(ClozeItem(f"{e} has a", [f" {p}." for p in PETS], PETS.index(a["pet"]), "pet"))
        fc = world[a["friend"]]["city"]
        items.append(ClozeItem(f"the friend of {e} lives in", [f" {c}." for c in CITIES], CITIES.index(fc), "friend_city"))
    return items


def make_corpus(cfg: CorpusConfig, seed: int = 0) -> Corpus:
    """The whole synthetic benchmark, deterministic given `seed`. Training documents come in a seeded random order."""
    rng = random.Random(seed)
    world = make_world(cfg.n_entities, rng)
    clean = [clean_doc(world, cfg, rng) for _ in range(cfg.n_clean)]
    n_noise = round(cfg.noise_frac * cfg.n_clean)
    noise = [noise_doc(NOISE_KINDS[i % len(NOISE_KINDS)], rng.choice(clean), rng) for i in range(n_noise)]
    dups = [near_duplicate(rng.choice(clean), cfg.dup_edits, rng) for _ in range(round(cfg.dup_frac * cfg.n_clean))]
    train = clean + noise + dups
    rng.shuffle(train)
    target = [clean_doc(world, cfg, rng).text for _ in range(cfg.n_target)]
    valid = [clean_doc(world, cfg, rng).text for _ in range(cfg.n_valid)]
    return Corpus(train, target, valid, cloze_items(world), world)


def read_jsonl(path: str | Path) -> list[str]:
    """Texts of a JSONL corpus, one `{"text": str, ...}` object per line (blank lines skipped)."""
    p = Path(path)
    if not p.is_file():
        raise ShermanError(f"no such corpus file: {p}")
    texts = []
    with open(p) as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ShermanError(f"{p}:{i}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise ShermanError(f'{p}:{i}: each line must be an object with a string "text" field')
            if not obj["text"]:
                raise ShermanError(f"{p}:{i}: empty text")
            texts.append(obj["text"])
    if not texts:
        raise ShermanError(f"{p}: no documents")
    return texts


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    with open(tmp, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    tmp.replace(p)


def write_corpus(corpus: Corpus, out_dir: str | Path) -> dict[str, Path]:
    """train.jsonl ({"text", "kind", "level"}), target.jsonl, valid.jsonl, cloze.jsonl under `out_dir`."""
    out = Path(out_dir)
    paths = {k: out / f"{k}.jsonl" for k in ("train", "target", "valid", "cloze")}
    write_jsonl(paths["train"], [asdict(d) for d in corpus.train])
    write_jsonl(paths["target"], [{"text": t} for t in corpus.target])
    write_jsonl(paths["valid"], [{"text": t} for t in corpus.valid])
    write_jsonl(paths["cloze"], [asdict(c) for c in corpus.cloze])
    return paths


# ----------------------------------------------------------------------------------------------- graded corpus
#
# The corpus above has discrete document kinds, and LQS then acts as a kind label. The graded corpus gives every
# document a continuous quality and a graded difficulty (DELT's premise, Sec. 4.1: scores that separate "good and
# learnable" from "bad or hard" data along a continuum):
#
# * quality: a corruption rate c ~ U(0, 1) per document; each of its sentences is independently replaced by a
#   corrupted version with probability c (a false fact with the same surface form, the sentence's words shuffled,
#   or random characters, chosen uniformly). A `junk_frac` share (<= 5%) of documents is pure junk (boilerplate
#   or random characters, c = 1);
# * difficulty: reasoning hops h in 1..4. A hop-h sentence states an attribute of the entity reached by following
#   the friend relation h - 1 times ("the friend of the friend of bavo lives in rome." is h = 3); every sentence
#   of a document has the document's h, so the difficulty is one number per document.
#
# Target J, validation and the downstream cloze test are clean and disjoint (no J text is a validation or
# training text); J is meant for scoring only, validation and cloze for evaluation only.

RELATIONS = ("city", "color", "pet")
"""Attributes a hop sentence can state."""
CORRUPTIONS = ("false", "shuffled", "random")
"""How a corrupted sentence is made from a true one."""
HOPS = (1, 2, 3, 4)
"""Difficulty levels: reasoning hops of every sentence of a document."""


@dataclass
class GradedConfig:
    n_entities: int = 48
    """Entities in the world (each has a city, a colour, a pet and a friend)."""
    n_train: int = 8192
    """Training documents (junk included)."""
    sentences: int = 3
    """Sentences per (non-junk) document."""
    junk_frac: float = 0.04
    """Fraction of training documents that are pure junk (boilerplate or random characters); at most 0.05."""
    hop_probs: tuple[float, float, float, float] = (0.25, 0.25, 0.25, 0.25)
    """Probability of difficulty 1, 2, 3, 4 hops for a document."""
    n_target: int = 64
    """Clean documents in the target set J (scoring only)."""
    n_valid: int = 256
    """Clean held-out validation documents (evaluation only)."""
    n_cloze_per_hop: int = 48
    """Downstream cloze items per hop level (evaluation only)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.junk_frac <= 0.05:
            raise ValueError(f"junk_frac must be in [0, 0.05], got {self.junk_frac}")
        if self.sentences < 1 or self.n_train < 1 or self.n_entities < 2:
            raise ValueError("need sentences >= 1, n_train >= 1, n_entities >= 2")


@dataclass
class GradedDoc:
    text: str
    """The document (sentences joined by one space)."""
    hops: int
    """Difficulty: reasoning hops of each sentence (0 for junk)."""
    corrupt_rate: float
    """The document's drawn corruption rate c (1.0 for junk)."""
    corrupted: list[bool]
    """Per sentence: was it corrupted (all True for junk, which is one 'sentence')."""
    kind: str = "graded"
    """graded | junk."""

    @property
    def corrupt_frac(self) -> float:
        """Realized fraction of corrupted sentences."""
        return sum(self.corrupted) / len(self.corrupted)


@dataclass
class GradedCorpus:
    train: list[GradedDoc]
    target: list[str]
    """J: clean documents for scoring only."""
    valid: list[str]
    """Clean held-out documents for evaluation only."""
    cloze: list[ClozeItem]
    """Downstream cloze items (kind = f"hop{h}") for evaluation only."""
    world: dict = field(default_factory=dict)

    def eval_texts(self) -> list[str]:
        """Every text an evaluation may read (validation documents and cloze prompts); disjoint from J."""
        return list(self.valid) + [c.prompt for c in self.cloze]


def follow(world: dict, e: str, hops: int) -> str:
    """The entity reached from `e` by following the friend relation hops - 1 times."""
    for _ in range(hops - 1):
        e = world[e]["friend"]
    return e


def hop_subject(e: str, hops: int) -> str:
    """'bavo' (1 hop), 'the friend of bavo' (2), 'the friend of the friend of bavo' (3), ..."""
    return "the friend of " * (hops - 1) + e


def hop_prompt(e: str, hops: int, rel: str) -> str:
    """The sentence up to its answer: '<subject> lives in' | '<subject> likes' | '<subject> has a'."""
    verb = {"city": "lives in", "color": "likes", "pet": "has a"}[rel]
    return f"{hop_subject(e, hops)} {verb}"


def _values(rel: str) -> tuple[str, ...]:
    return {"city": CITIES, "color": COLORS, "pet": PETS}[rel]


def hop_sentence(world: dict, e: str, hops: int, rel: str, value: str | None = None) -> str:
    """A hop sentence; true unless `value` overrides the attribute."""
    v = world[follow(world, e, hops)][rel] if value is None else value
    return f"{hop_prompt(e, hops, rel)} {v}."


def parse_hop_sentence(world: dict, s: str) -> tuple[int, bool] | None:
    """(hops, is_true) of a well-formed hop sentence, None when `s` is not one (shuffled or random text)."""
    if not s.endswith("."):
        return None
    words = s[:-1].split(" ")
    hops = 1
    while words[:3] == ["the", "friend", "of"]:
        words, hops = words[3:], hops + 1
    for rel, verb in (("city", ["lives", "in"]), ("color", ["likes"]), ("pet", ["has", "a"])):
        if len(words) == 2 + len(verb) and words[1 : 1 + len(verb)] == verb and words[0] in world and words[-1] in _values(rel):
            return hops, world[follow(world, words[0], hops)][rel] == words[-1]
    return None


def corrupt_sentence(world: dict, e: str, hops: int, rel: str, how: str, rng: random.Random) -> str:
    """A corrupted version of the true hop sentence about (e, hops, rel)."""
    true = hop_sentence(world, e, hops, rel)
    if how == "false":  # same surface form, wrong attribute value
        v = world[follow(world, e, hops)][rel]
        return hop_sentence(world, e, hops, rel, rng.choice([x for x in _values(rel) if x != v]))
    if how == "shuffled":
        words = true[:-1].split(" ")
        while True:
            rng.shuffle(words)
            s = " ".join(words)
            if parse_hop_sentence(world, s + ".") is None:
                return s + ","  # ends without a period, so it can never parse as a fact
    if how == "random":
        return "".join(rng.choice(ALPHABET[:27]) for _ in range(len(true) - 1)).strip() + ","
    raise ValueError(f"unknown corruption {how!r}")


def graded_doc(world: dict, cfg: GradedConfig, rng: random.Random) -> GradedDoc:
    """One non-junk document: hops ~ hop_probs, c ~ U(0, 1), each sentence corrupted with probability c."""
    hops = rng.choices(HOPS, weights=cfg.hop_probs)[0]
    c = rng.random()
    ents = list(world)
    sents, flags = [], []
    for _ in range(cfg.sentences):
        e, rel = rng.choice(ents), rng.choice(RELATIONS)
        bad = rng.random() < c
        sents.append(corrupt_sentence(world, e, hops, rel, rng.choice(CORRUPTIONS), rng) if bad else hop_sentence(world, e, hops, rel))
        flags.append(bad)
    return GradedDoc(" ".join(sents), hops, c, flags)


def junk_doc(n_chars: int, rng: random.Random) -> GradedDoc:
    """Pure junk: repeated boilerplate or random characters, about n_chars long."""
    if rng.random() < 0.5:
        phrase = rng.choice(BOILERPLATE)
        text = (phrase * (n_chars // len(phrase) + 1))[:n_chars].rstrip()
    else:
        text = "".join(rng.choice(ALPHABET) for _ in range(n_chars)).strip() or "x"
    return GradedDoc(text, 0, 1.0, [True], "junk")


def clean_graded_text(world: dict, cfg: GradedConfig, rng: random.Random) -> str:
    """A clean document (c = 0) at a random difficulty."""
    hops = rng.choices(HOPS, weights=cfg.hop_probs)[0]
    return " ".join(hop_sentence(world, rng.choice(list(world)), hops, rng.choice(RELATIONS)) for _ in range(cfg.sentences))


def graded_cloze(world: dict, n_per_hop: int, rng: random.Random) -> list[ClozeItem]:
    """n_per_hop items per hop level: '<subject> <verb>' -> ' <value>.' over every value of the relation."""
    items = []
    for h in HOPS:
        for _ in range(n_per_hop):
            e, rel = rng.choice(list(world)), rng.choice(RELATIONS)
            vals = _values(rel)
            items.append(ClozeItem(hop_prompt(e, h, rel), [f" {v}." for v in vals], vals.index(world[follow(world, e, h)][rel]), f"hop{h}"))
    return items


def make_graded_corpus(cfg: GradedConfig, seed: int = 0) -> GradedCorpus:
    """The graded benchmark, deterministic given `seed`; J, validation and training texts are pairwise disjoint."""
    rng = random.Random(seed)
    world = make_world(cfg.n_entities, rng)
    n_junk = round(cfg.junk_frac * cfg.n_train)
    train = [graded_doc(world, cfg, rng) for _ in range(cfg.n_train - n_junk)]
    mean_len = sum(len(d.text) for d in train) // max(1, len(train))
    train += [junk_doc(mean_len, rng) for _ in range(n_junk)]
    rng.shuffle(train)
    seen = {d.text for d in train}
    target: list[str] = []
    valid: list[str] = []
    for out, n in ((target, cfg.n_target), (valid, cfg.n_valid)):
        while len(out) < n:
            t = clean_graded_text(world, cfg, rng)
            if t not in seen:
                seen.add(t)
                out.append(t)
    return GradedCorpus(train, target, valid, graded_cloze(world, cfg.n_cloze_per_hop, rng), world)
