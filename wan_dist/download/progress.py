"""Messages and progress for `wan-dist download`: tqdm bars on a terminal, plain log lines otherwise.

On a terminal: one bar for all bytes of a phase (verify, download) plus one bar per file of 64 MiB or more while it
transfers. Otherwise (a log file, a batch job): a line at every 10 % of a phase's bytes and one per finished file.
Every message goes through `redact`, so a token from the environment never reaches the output, whatever an error
message from a library may contain.
"""
from __future__ import annotations

import os
import sys
import threading

FILE_BAR_MIN = 64 << 20
TOKEN_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "MODELSCOPE_API_TOKEN")


class Console:
    def __init__(self, bars: bool):
        self.bars = bars
        self.cancel = threading.Event()  # set on Ctrl-C / SIGTERM: transfers and hashing stop at their next chunk

    @staticmethod
    def redact(text: str) -> str:
        for var in TOKEN_VARS:
            token = os.environ.get(var, "")
            if len(token) >= 6:
                text = text.replace(token, f"<{var}>")
        return text

    def say(self, msg: str) -> None:
        msg = self.redact(msg)
        if self.bars:
            from tqdm import tqdm
            tqdm.write(msg, file=sys.stdout)  # prints above the bars instead of through them
        else:
            print(msg, flush=True)

    def error(self, msg: str) -> None:
        print(f"wan-dist download: error: {self.redact(msg)}", file=sys.stderr, flush=True)

    def meter(self, desc: str, total: int, initial: int = 0, quiet_below: int = 0) -> "Meter":
        return Meter(self, desc, total, initial, log=not self.bars and total >= quiet_below)

    def file_bar_class(self, meter: "Meter"):
        """A tqdm-like class for one file's transfer (huggingface_hub's http_get creates one per file; the
        ModelScope source wraps it in the client's callback): its own bar for big files, every byte to `meter`."""
        bars = self.bars

        class FileBar:
            def __init__(self, *, desc=None, total=None, initial=0, **_):
                from tqdm import tqdm
                self.own = tqdm(desc=_short(desc), total=total, initial=initial, unit="B", unit_scale=True,
                                unit_divisor=1024, leave=False, file=sys.stderr, dynamic_ncols=True,
                                disable=not bars or (total or 0) < FILE_BAR_MIN)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.own.close()
                return False

            def update(self, n=1):
                self.own.update(n)
                meter.update(n)

        return FileBar


class Meter:
    """Bytes done in one phase, from many threads: a tqdm bar, or a log line every 10 %."""

    def __init__(self, con: Console, desc: str, total: int, initial: int, log: bool):
        from tqdm import tqdm
        self.con, self.desc, self.total, self.done, self.log = con, desc, total, initial, log
        self.lock = threading.Lock()
        self.next_pct = 10
        self.bar = tqdm(desc=desc, total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                        file=sys.stderr, dynamic_ncols=True, disable=not con.bars or total == 0)

    def update(self, n: int) -> None:
        with self.lock:
            self.bar.update(n)
            self.done += n
            if not self.log or not self.total:
                return
            pct = 100 * self.done // self.total
            if pct < self.next_pct:
                return
            self.next_pct = (pct // 10 + 1) * 10
            from wan_dist.download.plan import human
            self.con.say(f"{self.desc}: {min(pct, 100)}% ({human(self.done)} of {human(self.total)})")

    def close(self) -> None:
        self.bar.close()


def _short(desc) -> str | None:
    return desc if desc is None or len(desc) <= 40 else "…" + desc[-39:]
