"""How a wan-dist process starts and ends cheaply (docs/BENCHMARKS.md "Start-up and teardown").

    collector_paused()   the heavy imports of a process's start-up (torch, diffusers, transformers) with the cyclic
                         garbage collector paused, then what they made frozen out of later collections
    exit_now(code)       flush stdout / stderr / logging and end the process without interpreter teardown

Why the collector: importing torch, diffusers and transformers makes ~660k long-lived objects (modules, classes,
functions) and almost no garbage, but to the collector they are fresh allocations, so it runs full collections over
the growing heap while they import, and every later full collection (EngineCache.drop, the automatic ones of a long
batch) scans them all again. Paused, then `gc.freeze()`: they move to a permanent generation that collections skip
for the rest of the process. The cost: cyclic garbage made inside the block is never collected (imports make next to
none).

Why not teardown: after the last output is closed and flushed, the interpreter would finalise every module and large
object one by one for a process that ends anyway (the times of both are in docs/BENCHMARKS.md).
"""
from __future__ import annotations

import gc
import logging
import os
import sys
from contextlib import contextmanager


@contextmanager
def collector_paused():
    """Run the block with the cyclic GC paused; on leaving it, freeze every object alive then and resume the GC. A
    no-op inside another paused block, or when the collector was disabled by whoever embeds wan-dist."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def exit_now(code: int):
    """End the process with `code` at once: everything that matters must already be closed (files written and renamed,
    W&B finished, the process group destroyed); only stdout, stderr and the logging handlers are flushed here."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(code))
