"""The private two-node Slurm test cluster (tests/cluster/slurm_up.sh) for pytest.

`start()` brings the cluster up (installing the Debian packages when missing) and returns a `SlurmCluster`: node
names and addresses read back from slurmctld, the partition, an environment for client commands, and
`sbatch()` / `wait()` helpers that never hang (every command has a timeout; a job that outlives its timeout is
cancelled and reported with the daemons' log tails). There is no accounting daemon, so job states and exit codes
come from `scontrol show job` while slurmctld still holds the record (MinJobAge=5 s after the end).

The cluster is one per machine (fixed daemon ports, one state dir): a session holds an exclusive flock on
`<state dir>.lock` while it uses the cluster, and a second session waits for it.
"""
from __future__ import annotations

import fcntl
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
UP = HERE / "slurm_up.sh"
DOWN = HERE / "slurm_down.sh"
JOBS = HERE / "jobs"
EXIT_UNAVAILABLE = 3            # slurm_up.sh / apt_install.sh: packages missing and apt cannot install them
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
            "PREEMPTED", "SPECIAL_EXIT"}
_KEY = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z_/:]*)=")


class SlurmUnavailable(RuntimeError):
    """The packages are missing and cannot be installed here (no apt, not root, apt failed): tests skip."""


def state_dir() -> Path:
    return Path(os.environ.get("WAN_DIST_SLURM_DIR", "/tmp/wan-dist-slurm"))


def parse_record(line: str) -> dict[str, str]:
    """One `scontrol show ... -o` line -> {key: value}. Values may hold spaces (Command=, Reason=) and '='."""
    keys = list(_KEY.finditer(line))
    out = {}
    for i, m in enumerate(keys):
        end = keys[i + 1].start() if i + 1 < len(keys) else len(line)
        out[m.group(1)] = line[m.end():end].strip()
    return out


@dataclass(frozen=True)
class Job:
    """A finished job as slurmctld last showed it. Arrays: one record per task; state/exit_code are the worst."""
    job_id: str
    state: str
    exit_code: int
    signal: int
    restarts: int
    records: tuple[dict[str, str], ...]
    seconds: float                           # sbatch/wait start -> seen finished by the poller

    @property
    def ok(self) -> bool:
        return self.state == "COMPLETED" and self.exit_code == 0

    def by_task(self) -> dict[str, dict[str, str]]:
        return {r.get("ArrayTaskId", "") or r["JobId"]: r for r in self.records}


@dataclass
class SlurmCluster:
    dir: Path
    conf: Path
    partition: str
    nodes: dict[str, str]                     # NodeName -> NodeAddr (what rendezvous endpoints must use)
    ports: dict[str, int]                     # NodeName -> slurmd port, from the generated config
    cpus_per_node: int
    env: dict[str, str] = field(repr=False)   # SLURM_CONF, PATH with this Python's bin dir and the sacct shim first
    up_seconds: float = 0.0

    # ---- client commands ------------------------------------------------------------------------------------
    def run(self, *args: str, timeout: float = 30, check: bool = True, cwd=None) -> subprocess.CompletedProcess:
        p = subprocess.run(list(args), env=self.env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
        if check and p.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} -> rc {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}")
        return p

    def sbatch(self, *args: str | os.PathLike, cwd: os.PathLike) -> str:
        """`sbatch --parsable ARGS` from cwd; returns the job id (the array's id for arrays)."""
        p = self.run("sbatch", "--parsable", *map(str, args), cwd=cwd)
        return p.stdout.strip().split(";")[0]

    def records(self, job_id: str) -> list[dict[str, str]] | None:
        """`scontrol show job -o ID` (all tasks of an array); None once slurmctld has purged the job."""
        p = self.run("scontrol", "show", "job", "-o", str(job_id), check=False, timeout=15)
        if p.returncode != 0:
            if "Invalid job id" in p.stderr:
                return None
            raise RuntimeError(f"scontrol show job {job_id}: {p.stderr.strip()}")
        return [parse_record(line) for line in p.stdout.splitlines() if line.strip()]

    def wait_for(self, job_id: str, pred, timeout: float = 60, what: str = "condition") -> list[dict[str, str]]:
        """Poll until pred(records) is true; TimeoutError (job cancelled) otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            recs = self.records(job_id) or []
            if pred(recs):
                return recs
            if time.monotonic() > deadline:
                self._give_up(job_id, f"{what} not reached in {timeout:.0f} s", recs)
            time.sleep(0.2)

    def wait(self, job_id: str, timeout: float = 120) -> Job:
        """Wait until every task of job_id is in a terminal state. Requeued jobs (PENDING again) keep waiting.

        Call it while the job runs: slurmctld forgets a finished job (or array task) MinJobAge=5 s to ~65 s after
        its end, and only the records seen by this poll are in the result."""
        t0 = time.monotonic()
        seen: dict[str, dict[str, str]] = {}       # JobId -> last record (array tasks can be purged one by one)
        while True:
            recs = self.records(job_id)
            if recs is None:
                if seen and all(r["JobState"] in TERMINAL for r in seen.values()):
                    break
                raise RuntimeError(f"job {job_id} vanished from slurmctld before it was seen finished: {seen}")
            for r in recs:
                seen[r["JobId"]] = r
            # pending array tasks show as one PENDING record ("ArrayTaskId=1-2"), so "all terminal" covers arrays
            if recs and all(r["JobState"] in TERMINAL for r in recs):
                break
            if time.monotonic() - t0 > timeout:
                self._give_up(job_id, f"not finished after {timeout:.0f} s", recs)
            time.sleep(0.2)
        records = tuple(seen.values())
        codes = [tuple(int(x) for x in r.get("ExitCode", "0:0").split(":")) for r in records]
        bad = [r["JobState"] for r in records if r["JobState"] != "COMPLETED"]
        return Job(job_id=str(job_id), state=bad[0] if bad else "COMPLETED",
                   exit_code=max(c[0] for c in codes), signal=max(c[1] for c in codes),
                   restarts=max(int(r.get("Restarts", "0")) for r in records), records=records,
                   seconds=time.monotonic() - t0)

    def submit_and_wait(self, *args: str | os.PathLike, cwd: os.PathLike, timeout: float = 120) -> Job:
        t0 = time.monotonic()
        job = self.wait(self.sbatch(*args, cwd=cwd), timeout=timeout)
        return Job(**{**job.__dict__, "seconds": time.monotonic() - t0})

    def _give_up(self, job_id: str, why: str, recs) -> None:
        self.run("scancel", str(job_id), check=False, timeout=15)
        raise TimeoutError(f"job {job_id}: {why}; cancelled.\nlast records: {recs}\n{self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        out = []
        for f in sorted((self.dir / "log").glob("*.log")):
            tail = f.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {f}\n" + "\n".join(tail))
        return "\n".join(out)


# ---- bring-up / tear-down ---------------------------------------------------------------------------------------
def _client_env(conf: Path, shim_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["SLURM_CONF"] = str(conf)
    # Jobs inherit this environment (sbatch --export=ALL): the project's venv Python and torchrun come first.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), str(shim_dir), env.get("PATH", "")])
    for k in [k for k in env if k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")) and k != "SLURM_CONF"]:
        del env[k]                              # running inside a Slurm job must not leak its job into ours
    return env


def start(timeout: float = 600) -> SlurmCluster:
    """Run slurm_up.sh; SlurmUnavailable when it cannot install the packages (exit 3), RuntimeError on failure."""
    t0 = time.monotonic()
    p = subprocess.run(["bash", str(UP)], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if p.returncode == EXIT_UNAVAILABLE:
        reason = (p.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise SlurmUnavailable(reason)
    if p.returncode != 0:
        raise RuntimeError(f"slurm_up.sh failed (rc {p.returncode}):\n{p.stderr}")
    up_s = time.monotonic() - t0
    d = state_dir()
    conf = d / "etc" / "slurm.conf"
    env = _client_env(conf, d / "bin")
    text = conf.read_text()
    ports = {m.group(1): int(m.group(2)) for m in re.finditer(r"^NodeName=(\S+) .*\bPort=(\d+)", text, re.M)}
    partition = re.search(r"^PartitionName=(\S+)", text, re.M).group(1)
    nodes_out = subprocess.run(["scontrol", "show", "node", "-o"], env=env, capture_output=True, text=True,
                               timeout=30, check=True).stdout
    recs = [parse_record(line) for line in nodes_out.splitlines() if line.strip()]
    return SlurmCluster(dir=d, conf=conf, partition=partition, nodes={r["NodeName"]: r["NodeAddr"] for r in recs},
                        ports=ports, cpus_per_node=int(recs[0]["CPUTot"]), env=env, up_seconds=up_s)


def stop(lock_held: bool = True) -> str:
    p = subprocess.run(["bash", str(DOWN)], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                       env={**os.environ, "WAN_DIST_SLURM_LOCK_HELD": "1" if lock_held else "0"})
    return p.stderr


class SessionLock:
    """Exclusive flock on <state dir>.lock for as long as a test session uses the cluster."""

    def __init__(self, timeout: float = 500):      # below the 600-s pytest-timeout
        self.path = Path(str(state_dir()) + ".lock")
        self.timeout = timeout
        self.fh = None

    def __enter__(self):
        self.fh = open(self.path, "a+")
        deadline = time.monotonic() + self.timeout
        told = False
        while True:
            try:
                fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if not told:
                    print(f"[slurm] another test session holds {self.path}; waiting up to {self.timeout:.0f} s",
                          file=sys.stderr)
                    told = True
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the Slurm test cluster is held by another session ({self.path})") from None
                time.sleep(1)

    def __exit__(self, *exc):
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()
