"""Log lines carry the rank (DESIGN §9)."""
from __future__ import annotations

import logging
import sys


def setup_logging(rank: int) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                        format=f"%(asctime)s [rank{rank}] %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
