"""Knowledge base of the agentic 6G system (arXiv 2505.22311 Sec. IV; CommLLM's data-retrieval stage).

Markdown files under `sherman/agents/kb/` (or any directory the user gives) are split at `## ` headings into passages
whose id is `<file stem>#<heading>`; the index is BM25 from `bm25s` (no hand-written ranking). Answers cite passages
by id.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

KB_DIR = Path(__file__).parent / "kb"


@dataclass
class Passage:
    id: str
    """'<file stem>#<heading>', the citation key."""
    text: str
    score: float = 0.0


def load_passages(kb_dir: Path = KB_DIR) -> list[Passage]:
    out: list[Passage] = []
    files = sorted(Path(kb_dir).glob("*.md"))
    if not files:
        raise ValueError(f"no markdown files in knowledge-base directory {kb_dir}")
    for f in files:
        head, body = None, []
        for line in f.read_text(encoding="utf-8").splitlines() + ["## "]:
            if line.startswith("## "):
                if head and "".join(body).strip():
                    out.append(Passage(f"{f.stem}#{head}", " ".join(x.strip() for x in body if x.strip())))
                head, body = line[3:].strip(), []
            elif head is not None:
                body.append(line)
    return out


class KnowledgeBase:
    """BM25 over the passages; `search(query, k)` returns the top-k passages with scores."""

    def __init__(self, kb_dir: Path = KB_DIR):
        import bm25s

        self._bm25s = bm25s
        self.passages = load_passages(kb_dir)
        self.index = bm25s.BM25()
        # the heading words are part of the passage text, so "zero forcing" also matches "precoder-zf"
        docs = [p.id.split("#", 1)[1].replace("-", " ") + " " + p.text for p in self.passages]
        self.index.index(bm25s.tokenize(docs, stopwords="en", show_progress=False), show_progress=False)

    def search(self, query: str, k: int = 3) -> list[Passage]:
        k = max(1, min(k, len(self.passages)))
        toks = self._bm25s.tokenize([query], stopwords="en", show_progress=False)
        docs, scores = self.index.retrieve(toks, k=k, show_progress=False)
        return [Passage(self.passages[int(i)].id, self.passages[int(i)].text, float(s)) for i, s in zip(docs[0], scores[0]) if s > 0]

    def get(self, pid: str) -> Passage:
        for p in self.passages:
            if p.id == pid:
                return p
        raise KeyError(pid)
