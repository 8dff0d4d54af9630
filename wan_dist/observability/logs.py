"""Log lines carry the rank (DESIGN §9)."""
from __future__ import annotations

import logging
import sys


def setup_logging(rank: int, tag: str | None = None) -> None:
    """`tag` replaces `rank<r>` where the rank alone does not say who speaks (a Ray job's driver, a gang's rank)."""
    who = tag or f"rank{rank}"
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                        format=f"%(asctime)s [{who}] %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
