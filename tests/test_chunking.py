import pytest

from app.chunking import Chunker, chunk_ids
from app.store.base import chunk_uuid


@pytest.fixture(scope="module")
def chunker(encoder):
    return Chunker(encoder.tokenizer, max_tokens=256, overlap=32)


def test_short_text_is_one_chunk(chunker):
    [c] = chunker.chunk("A short note.")
    assert c.index == 0 and c.text == "A short note." and 0 < len(c.token_ids) <= 254


def test_long_text_windows_fit_the_model_and_overlap(chunker, encoder):
    text = " ".join(f"word{i} is number {i}." for i in range(400))
    chunks = chunker.chunk(text)
    assert len(chunks) > 3
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for c in chunks:
        assert len(c.token_ids) + 2 <= 256
        assert text[c.char_start:c.char_end] == c.text
    for a, b in zip(chunks, chunks[1:]):
        assert a.token_ids[-32:] == b.token_ids[:32]  # configured overlap
    assert chunks[0].char_start == 0 and chunks[-1].char_end == len(text.rstrip())
    # every token of the document is in some chunk
    all_ids = encoder.tokenizer.encode(text, add_special_tokens=False).ids
    covered = list(chunks[0].token_ids) + [t for c in chunks[1:] for t in c.token_ids[32:]]
    assert covered == all_ids


def test_deterministic_ids_and_hash(chunker):
    assert chunk_ids("doc-1", 2) == [chunk_uuid("doc-1", 0), chunk_uuid("doc-1", 1)]
    assert chunk_uuid("doc-1", 0) != chunk_uuid("doc-1-extra", 0)
    assert chunker.content_hash("x") == chunker.content_hash("x") != chunker.content_hash("y")
    other = Chunker(chunker.tokenizer, max_tokens=128, overlap=0)
    assert other.content_hash("x") != chunker.content_hash("x")  # chunking is part of the content


def test_bad_parameters(chunker):
    with pytest.raises(ValueError):
        Chunker(chunker.tokenizer, max_tokens=256, overlap=254)
