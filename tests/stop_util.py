"""Stop a real launcher process the way a cluster does: SIGTERM once its first item is made, then expect exit 75."""
from __future__ import annotations

import signal
import subprocess
import time


def sigterm_after(cmd: list[str], made, *, cwd, env=None, timeout: float = 300) -> str:
    """Start `cmd`; as soon as `made()` is true (an item finished) send SIGTERM; assert it ends with 75 (stopped at
    a safe point). Returns its output (stdout and stderr together)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not made():
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be signalled"
    proc.send_signal(signal.SIGTERM)
    log, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 75, log[-4000:]
    return log
