"""settle_heap keeps start-up objects out of full collections, not later garbage."""

from __future__ import annotations

import gc
import weakref

from cantata.cluster._heap import settle_heap


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def cycle() -> weakref.ref[Node]:
    a, b = Node(), Node()
    a.other, b.other = b, a  # only the collector can free a cycle
    return weakref.ref(a)


def test_objects_alive_at_settling_are_frozen_and_later_garbage_is_still_collected():
    before = gc.get_freeze_count()
    settled = cycle()  # garbage already: collected by the settling, not frozen
    kept = Node()
    settle_heap()
    assert settled() is None
    assert gc.get_freeze_count() > before  # kept, the imports, everything alive now
    later = cycle()
    gc.collect()
    assert later() is None  # garbage made after settling is collected as before
    assert kept.other is None
