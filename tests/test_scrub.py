import pytest

from app.chunking import Chunker
from app.deadletter import Record
from app.events import ChangeEvent, EventCodec, Op
from app.pipeline import Processor
from app.scrub import RegexScrubber, load_scrubber
from app.store.lancedb import LanceDBStore


@pytest.mark.parametrize("text,kinds", [
    ("write to a.b-c+tag@mail.example.co.uk today", {"email": 1}),
    ("call (020) 7946 0958 or 555-123-4567", {"phone": 2}),
    ("Visa 4111-1111-1111-1111 and Amex 3782 822463 10005", {"card": 2}),
    ("ISBN 978 3 16 148410 0 and invoice 2024-05-01", {}),
    ("order 1234 5678 9012 3456, year 1999, 42 apples", {}),
])
def test_regex_scrubber(text, kinds):
    out, found = RegexScrubber().scrub(text)
    assert found == kinds, out
    assert "@" not in out or not kinds.get("email")


def test_load_scrubber():
    assert load_scrubber("none") is None and isinstance(load_scrubber("regex"), RegexScrubber)
    assert load_scrubber("app.scrub:RegexScrubber").name == "regex-v1"
    with pytest.raises(ValueError):
        load_scrubber("nonsense")


def test_scrubbed_text_is_neither_embedded_nor_stored(tmp_path, encoder):
    codec = EventCodec()
    store = LanceDBStore(tmp_path / "l", encoder.fingerprint, encoder.dim)
    seen = []

    class Spy:
        fingerprint, dim, tokenizer = encoder.fingerprint, encoder.dim, encoder.tokenizer

        def encode_tokens(self, ids):
            seen.extend(encoder.tokenizer.decode(list(i)) for i in ids)
            return encoder.encode_tokens(ids)

    p = Processor(codec, Spy(), Chunker(encoder.tokenizer), store, scrubber=RegexScrubber())
    text = "Contact jane.doe@example.org or +1 415 555 0100 about card 4111 1111 1111 1111."
    res = p.process([Record("c", 0, 0, b"d", codec.encode(ChangeEvent("d", Op.UPSERT, 1, 0, text)))])
    assert dict(res.scrubbed) == {"email": 1, "phone": 1, "card": 1}
    stored = store.chunk_rows("d")[0]["text"]
    assert "jane" not in stored and "4111" not in stored and "555" not in stored and "[EMAIL]" in stored
    assert not any("jane" in s or "4111" in s for s in seen)
    # enabling a scrubber changes the content hash: the same text is re-encoded, not "unchanged"
    plain = Processor(codec, encoder, Chunker(encoder.tokenizer), store)
    assert plain._content_hash(text) != p._content_hash(text)
