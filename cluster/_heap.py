"""Take what a process built at start-up out of the garbage collector's way.

A process that runs requests allocates fast, and Python's collector then walks every tracked
object now and then: measured here, a full collection of a driver's ~115k objects (imports,
Ray, pydantic's schemas, the topology) takes 50-70 ms, and a W4 window of five seconds held six
of them, each stalling every request in flight. Nearly all of those objects live as long as the
process. :func:`settle_heap` collects once and then freezes what is left (``gc.freeze``, as
pre-forking servers do), so later collections walk only what requests allocate.
"""

from __future__ import annotations

import gc

__all__ = ["settle_heap"]


def settle_heap() -> None:
    """Collect now, then keep every object alive at this moment out of future collections.

    Frozen objects are never collected: call it once a process has started (imports done,
    models loaded), not in a loop. What becomes garbage later is collected as usual.
    """
    gc.collect()
    gc.freeze()
