"""Token-aware chunking: a document becomes one or more windows of at most
``max_tokens`` tokens (special tokens included), overlapping by ``overlap`` tokens.

Chunks carry their token ids (so the encoder does not tokenise twice) and the
character span of the original text they cover. Chunk ``i`` of document ``d`` always
gets the object id ``chunk_uuid(d, i)``.

    >>> from tokenizers import Tokenizer
    >>> from app.encoder import MODEL_DIR
    >>> tok = Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json")); tok.no_truncation(); tok.no_padding()
    >>> ch = Chunker(tok, max_tokens=8, overlap=2)
    >>> [c.text for c in ch.chunk("one two three four five six seven eight nine ten")]
    ['one two three four five six', 'five six seven eight nine ten']
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from app.store.base import chunk_uuid


@dataclass(frozen=True)
class Chunk:
    index: int
    text: str
    token_ids: tuple[int, ...]
    char_start: int
    char_end: int


class Chunker:
    def __init__(self, tokenizer, max_tokens: int = 256, overlap: int = 32):
        if max_tokens < 8:
            raise ValueError("max_tokens must be at least 8")
        if not 0 <= overlap < max_tokens - 2:
            raise ValueError("overlap must be >= 0 and smaller than max_tokens - 2")
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.overlap = overlap
        self.window = max_tokens - 2  # room for [CLS] and [SEP]

    @property
    def signature(self) -> str:
        """Identifies the chunking parameters (part of a document's content hash)."""
        return f"tok{self.max_tokens}-ov{self.overlap}"

    def content_hash(self, text: str) -> str:
        """Hash of what determines a document's vectors: chunking parameters + text."""
        return hashlib.sha256(f"{self.signature}\x00{text}".encode("utf-8", "surrogatepass")).hexdigest()

    def chunk(self, text: str) -> list[Chunk]:
        return self.chunk_encoded(text, self.tokenizer.encode(text, add_special_tokens=False))

    def chunk_many(self, texts: list[str]) -> list[list[Chunk]]:
        encs = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        return [self.chunk_encoded(t, e) for t, e in zip(texts, encs)]

    def chunk_encoded(self, text: str, enc) -> list[Chunk]:
        ids, offsets = enc.ids, enc.offsets
        n = len(ids)
        if n <= self.window:
            return [Chunk(0, text, tuple(ids), 0, len(text))]
        step = self.window - self.overlap
        chunks = []
        start = 0
        while True:
            end = min(start + self.window, n)
            cs, ce = offsets[start][0], offsets[end - 1][1]
            chunks.append(Chunk(len(chunks), text[cs:ce], tuple(ids[start:end]), cs, ce))
            if end == n:
                return chunks
            start += step


def chunk_ids(doc_id: str, count: int) -> list[str]:
    return [chunk_uuid(doc_id, i) for i in range(count)]
