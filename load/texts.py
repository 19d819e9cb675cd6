"""Realistic, seeded document text for the load generator and the benchmark.

No downloads: sentences are assembled by a word-level Markov chain (order 1) trained on
the bundled corpus ``app/data/sample_corpus.jsonl`` (60 short articles, ~9k words, six
topics). The output is readable pseudo-English with the corpus' real vocabulary,
punctuation and capitalisation, so it tokenises like real text (about 1.3 WordPiece
tokens per word with the all-MiniLM-L6-v2 tokenizer).

Document lengths come from a :class:`LengthMix`: a mixture of length classes, each
log-uniform between its bounds, so the overall distribution is log-normal-ish: many short
notes, most documents of a few paragraphs, a tail of multi-chunk articles.

    >>> gen = TextGenerator(seed=1)
    >>> doc = gen.document(40)
    >>> 30 <= len(doc.text.split()) <= 60
    True
    >>> TextGenerator(seed=1).document(40) == doc     # seeded: reproducible
    True
    >>> LengthMix.parse("note:10-50:1,long:600-2000:3").classes[1].name
    'long'
"""
from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

CORPUS = Path(__file__).resolve().parent.parent / "app" / "data" / "sample_corpus.jsonl"
_SENTENCE_END = re.compile(r"[.!?][\"')\]]?$")


# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LengthClass:
    """Documents of ``lo``..``hi`` words (log-uniform), chosen with relative ``weight``."""

    name: str
    lo: int
    hi: int
    weight: float


@dataclass(frozen=True)
class LengthMix:
    """A mixture of :class:`LengthClass`; ``sample(rng)`` returns (words, class name).

    Spec string: ``name:lo-hi:weight,...`` e.g. ``note:10-50:0.25,post:50-300:0.55``.
    """

    classes: tuple[LengthClass, ...]

    @classmethod
    def parse(cls, spec: str) -> "LengthMix":
        out = []
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                name, rng, weight = part.split(":")
                lo, hi = (int(x) for x in rng.split("-"))
                w = float(weight)
            except ValueError:
                raise ValueError(f"bad length class {part!r}: expected name:lo-hi:weight") from None
            if not 1 <= lo <= hi or w < 0:
                raise ValueError(f"bad length class {part!r}: need 1 <= lo <= hi and weight >= 0")
            out.append(LengthClass(name, lo, hi, w))
        if not out or sum(c.weight for c in out) <= 0:
            raise ValueError(f"length mix {spec!r} has no class with a positive weight")
        return cls(tuple(out))

    def spec(self) -> str:
        return ",".join(f"{c.name}:{c.lo}-{c.hi}:{c.weight:g}" for c in self.classes)

    def sample(self, rng: random.Random) -> tuple[int, str]:
        c = rng.choices(self.classes, weights=[c.weight for c in self.classes])[0]
        words = math.exp(rng.uniform(math.log(c.lo), math.log(c.hi + 1)))
        return max(c.lo, min(c.hi, int(words))), c.name


#: Default for the load generator: short notes up to multi-chunk articles (measured: mean
#: ~220 words / ~285 tokens, median ~155 tokens; ~1/3 of documents need more than one
#: 256-token chunk, the long tail up to ~12).
DEFAULT_MIX = LengthMix.parse("note:10-50:0.25,post:50-300:0.55,article:300-600:0.12,long:600-2000:0.08")
#: The benchmark's mix: the issue targets ~200-token documents (mean ~210 tokens), with a
#: realistic tail of multi-chunk articles.
BENCH_MIX = LengthMix.parse("note:10-50:0.20,post:50-190:0.65,article:190-600:0.12,long:600-2000:0.03")


# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Document:
    title: str
    topic: str
    text: str
    words: int
    length_class: str = ""


class _Chain:
    """Order-1 word Markov chain with sentence starts, over the bundled corpus.

    One chain per topic plus a global one: a document follows its topic's chain and
    switches to the global chain for a word now and then (``mix``), so documents stay
    mostly on one topic without repeating the corpus verbatim.
    """

    def __init__(self, texts: Sequence[str], fallback: "_Chain | None" = None, mix: float = 0.2):
        self.fallback = fallback
        self.mix = mix
        self.next: dict[str, list[str]] = {}
        self.starts: list[str] = []
        for text in texts:
            words = text.split()
            at_start = True
            for a, b in zip(words, words[1:] + [None]):
                if at_start and a[:1].isupper():
                    self.starts.append(a)
                at_start = bool(_SENTENCE_END.search(a))
                if b is not None and not at_start:
                    self.next.setdefault(a, []).append(b)
        if not self.starts:
            raise ValueError("corpus has no sentences")

    def sentence(self, rng: random.Random, min_words: int = 5, max_words: int = 38) -> list[str]:
        w = rng.choice(self.starts)
        out = [w]
        while True:
            if _SENTENCE_END.search(w) and len(out) >= min_words:
                return out
            followers = self.next.get(w)
            if self.fallback is not None and (not followers or rng.random() < self.mix):
                followers = self.fallback.next.get(w) or followers
            if not followers or len(out) >= max_words:
                # dead end or too long: close the sentence cleanly
                out[-1] = out[-1].rstrip(",;:") + ("" if _SENTENCE_END.search(out[-1]) else ".")
                if len(out) >= min_words:
                    return out
                w = rng.choice(self.starts)
                out.append(w)
                continue
            w = rng.choice(followers)
            out.append(w)


def _load_corpus(path: Path = CORPUS) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class TextGenerator:
    """Seeded generator of readable pseudo-English documents.

    ``document(words)`` returns a :class:`Document` of about ``words`` words in paragraphs
    of 2-6 sentences; ``edit(text)`` returns a realistic revision (some sentences
    rewritten, one added or removed), for update events.
    """

    def __init__(self, seed: int = 0, corpus: Path = CORPUS):
        docs = _load_corpus(corpus)
        self.rng = random.Random(seed)
        topic_of = lambda d: (d.get("metadata") or {}).get("topic", "general")  # noqa: E731
        self.global_chain = _Chain([d["text"] for d in docs])
        self.topics = sorted({topic_of(d) for d in docs})
        self.chains = {t: _Chain([d["text"] for d in docs if topic_of(d) == t], fallback=self.global_chain)
                       for t in self.topics}
        self.chain = self.global_chain
        self._title_words = [w.strip(".,;:!?()\"'") for d in docs
                             for w in (d.get("metadata") or {}).get("title", "").split()]
        self._title_words = [w for w in self._title_words if w] or ["Notes"]

    def _sentence(self) -> str:
        return " ".join(self.chain.sentence(self.rng))

    def _paragraphs(self, words: int) -> list[list[str]]:
        paras: list[list[str]] = []
        total = 0
        while total < words:
            para: list[str] = []
            for _ in range(self.rng.randint(2, 6)):
                s = self._sentence()
                para.append(s)
                total += len(s.split())
                if total >= words:
                    break
            paras.append(para)
        return paras

    def text(self, words: int, topic: str | None = None) -> str:
        """About ``words`` words (whole sentences; a short note may be a single sentence cut)."""
        words = max(1, words)
        self.chain = self.chains.get(topic, self.global_chain) if topic else self.global_chain
        paras = self._paragraphs(words)
        flat = " ".join(" ".join(p) for p in paras).split()
        if len(flat) > words * 1.25 + 5:  # one long sentence overshot a short target: cut it
            return " ".join(flat[:words]).rstrip(",;:") + "."
        return "\n\n".join(" ".join(p) for p in paras)

    def title(self) -> str:
        k = self.rng.randint(2, 5)
        return " ".join(w.capitalize() for w in self.rng.sample(self._title_words, k))

    def document(self, words: int, length_class: str = "") -> Document:
        topic = self.rng.choice(self.topics)
        text = self.text(words, topic)
        return Document(self.title(), topic, text, len(text.split()), length_class)

    def edit(self, text: str, topic: str | None = None) -> str:
        """A revision of ``text``: ~20 % of sentences rewritten, sometimes one added or dropped.

        Always returns a different text (so the content hash changes).
        """
        self.chain = self.chains.get(topic, self.global_chain) if topic else self.global_chain
        sentences = re.split(r"(?<=[.!?])\s+", text.strip())
        n = len(sentences)
        for i in range(n):
            if self.rng.random() < 0.2:
                sentences[i] = self._sentence()
        r = self.rng.random()
        if r < 0.4 or n == 1:
            sentences.insert(self.rng.randint(0, len(sentences)), self._sentence())
        elif r < 0.6 and len(sentences) > 2:
            sentences.pop(self.rng.randrange(len(sentences)))
        new = " ".join(sentences)
        return new if new != text else new + " " + self._sentence()


def benchmark_documents(n: int = 600, seed: int = 20240601, mix: LengthMix = BENCH_MIX) -> list[Document]:
    """The fixed, seeded document set the benchmark uses (same seed -> same texts)."""
    gen = TextGenerator(seed=seed)
    docs = []
    for _ in range(n):
        words, cls = mix.sample(gen.rng)
        docs.append(gen.document(words, cls))
    return docs
