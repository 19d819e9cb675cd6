from app.batching import Action, Winner, coalesce, decide
from app.events import ChangeEvent, Op
from app.store.base import DocState


def up(v, doc="d", text="t"):
    return ChangeEvent(doc, Op.UPSERT, v, 0, text=text)


def dele(v, doc="d"):
    return ChangeEvent(doc, Op.DELETE, v, 0)


def tomb(doc="d"):
    return ChangeEvent(doc, Op.DELETE, None, 0)


def state(v, h="H", deleted=False, n=2):
    return DocState("d", v, "" if deleted else h, "fp", 0 if deleted else n, deleted, 0, 0)


def test_coalesce_keeps_newest_per_doc_in_offset_order():
    winners, sup = coalesce([(0, up(1)), (1, up(1, doc="e")), (2, up(3)), (3, up(2))])
    assert winners["d"].event.version == 3 and winners["e"].pos == 1
    assert sorted(sup) == [0, 3]


def test_tombstone_in_batch_deletes_what_came_before_and_can_be_followed():
    winners, _ = coalesce([(0, up(4)), (1, tomb())])
    w = winners["d"]
    assert w.event.is_tombstone and w.floor_version == 4
    winners, _ = coalesce([(0, up(4)), (1, tomb()), (2, up(5))])
    assert winners["d"].event.version == 5
    winners, _ = coalesce([(0, up(4)), (1, tomb()), (2, up(4))])  # a redelivered v4 stays deleted
    assert winners["d"].event.is_tombstone


def test_delete_wins_a_tie_with_upsert():
    winners, _ = coalesce([(0, up(4)), (1, dele(4))])
    assert winners["d"].event.op is Op.DELETE


def d(event, st, h="H", floor=None):
    return decide(Winner(0, event, floor), st, h if event.op is Op.UPSERT else None)


def test_decisions():
    assert d(up(1), None).action is Action.UPSERT
    assert d(up(2), state(3)).action is Action.STALE
    assert d(up(3), state(3)).action is Action.DUPLICATE
    assert d(up(3), state(3), h="other").action is Action.CONFLICT
    new = d(up(4), state(3))
    assert new.action is Action.UPSERT and new.reuse_vectors and new.version == 4
    assert not d(up(4), state(3), h="other").reuse_vectors
    assert d(up(3), state(3, deleted=True)).action is Action.STALE
    assert d(up(4), state(3, deleted=True)).action is Action.UPSERT
    assert not d(up(4), state(3, deleted=True)).reuse_vectors
    assert d(dele(2), state(3)).action is Action.STALE
    assert d(dele(3), state(3)).action is Action.DELETE
    assert d(dele(3), state(3, deleted=True)).action is Action.DUPLICATE
    assert d(dele(1), None).action is Action.DELETE  # remembered: an older upsert cannot resurrect it
    assert d(tomb(), None).action is Action.NOOP
    first = d(tomb(), None, floor=2)  # upsert v2 + tombstone in one batch, never stored
    assert first.action is Action.DELETE and first.version == 2
    assert d(tomb(), state(3, deleted=True)).action is Action.DUPLICATE
    t = d(tomb(), state(3), floor=5)
    assert t.action is Action.DELETE and t.version == 5
