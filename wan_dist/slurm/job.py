"""`wan-dist slurm-job [overrides]`: the body of slurm/array.sbatch and slurm/multinode.sbatch. One wan-dist run over
the Slurm allocation it runs in; the run's exit code decides what happens to the job.

    ranks per node   GPUs per node when there are any, else --ntasks-per-node, else --ntasks spread over the nodes,
                     else --cpus-per-task, else 1 (WAN_DIST_NPROC_PER_NODE overrides; alloc.ranks_per_node)
    pre-check        config and manifest errors end the job with 2 before any rank starts (precheck.py)
    one node         wan-dist torchrun --standalone --nproc_per_node N launch/run.py OVERRIDES
    several nodes    srun, one agent per node: wan-dist torchrun --nnodes M --nproc_per_node N --rdzv-backend c10d
                     --rdzv-endpoint <head NodeAddr>:<free port> --rdzv-id $SLURM_JOB_ID --local-addr <its NodeAddr>
    exit 75          stopped at a safe point (USR1 from --signal=B:USR1@90, SIGTERM, preemption): the job requeues
                     itself (`scontrol requeue`; needs --requeue; at most WAN_DIST_MAX_REQUEUES times, default 100)
                     and the rerun resumes
    exit 2           user error: the message is in the job's log; the job fails at once and is not retried
    exit 3           some items failed (recorded in the ledger): the job ends with 3, not retried; a rerun with
                     batch.retry_failed=true retries them
    exit 74, 1       out_dir cannot be written / a crash: the job ends with that code

Signals: the batch script execs this process, so `--signal=B:USR1@90` reaches it directly. On one node the
supervisor (supervise.py) forwards SIGUSR1/SIGTERM/SIGINT to the workers. On several nodes they go on to srun as
SIGUSR1 (srun forwards USR1 to every node's agent, whose supervisor forwards it to its workers; a SIGINT would only make
srun print its status). All ranks agree on the run's code, so node 0's agent (on this host) records it in this
process's temp directory, and every agent exits 0 for a clean code: srun's --kill-on-bad-exit then fires only for a
crash, never half-way through an agreed exit 75.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from .. import supervise
from ..batch.work import slurm_job
from ..exit_codes import ExitCode, worst
from . import alloc
from .precheck import precheck

RUN_PY = Path(__file__).resolve().parents[2] / "launch" / "run.py"
MAX_REQUEUES_ENV = "WAN_DIST_MAX_REQUEUES"
DEFAULT_MAX_REQUEUES = 100
OUTCOME_ENV = "WAN_DIST_SLURM_OUTCOME"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
CLEAN = {int(c) for c in ExitCode} - {int(ExitCode.CRASH)}


def say(msg: str) -> None:
    print(f"wan-dist slurm-job: {msg}", file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__.strip() + "\n\nusage (in a batch script): wan-dist slurm-job [overrides]")
        return 0
    if argv[:1] == ["--node"]:
        return node_main(argv[1:])
    env = os.environ
    early: list[int] = []       # a stop signal before the workers exist (the default action would kill this process)
    for s in STOP_SIGNALS:
        signal.signal(s, lambda signum, frame: early.append(signum))
    if "SLURM_JOB_ID" not in env:
        say("error: not inside a Slurm job (SLURM_JOB_ID is not set); submit it: sbatch slurm/array.sbatch ...")
        return int(ExitCode.USAGE)
    if not RUN_PY.is_file():
        say(f"error: {RUN_PY} not found: install wan-dist from a checkout (pip install -e .)")
        return int(ExitCode.USAGE)
    try:
        nproc, why = alloc.ranks_per_node(env)
    except ValueError as e:
        say(f"error: {e}")
        return int(ExitCode.USAGE)
    nodes = alloc.hostnames(env["SLURM_JOB_NODELIST"])
    say(f"job {slurm_job(env)} (restart {env.get('SLURM_RESTART_COUNT', '0')}): {len(nodes)} node(s) "
        f"{','.join(nodes)} x {nproc} rank(s) per node ({why})")
    try:
        decided = precheck(argv, env)
    except Exception as e:      # the shortcut only: the run itself checks everything again
        say(f"pre-check skipped ({type(e).__name__}: {e})")
        decided = None
    if decided is not None:
        return settle(decided, env)
    if early:
        say(f"{signal.Signals(early[0]).name} before the run started")
        return settle(ExitCode.TEMPFAIL, env)
    if len(nodes) == 1:
        code = supervise.main(["--standalone", "--nproc_per_node", str(nproc), str(RUN_PY), *argv])
    else:
        code = multinode(nodes, nproc, argv, env)
    return settle(ExitCode(code), env)


def multinode(nodes: list[str], nproc: int, overrides: list[str], env) -> int:
    # the batch script runs on the first node of the allocation: the port found free here is free where torchrun's
    # c10d store will listen (a requeued job keeps its id and gets a fresh port)
    endpoint = f"{alloc.node_addr(nodes[0])}:{alloc.free_port()}"
    say(f"c10d rendezvous at {endpoint} (head node {nodes[0]}), id {env['SLURM_JOB_ID']}")
    stopped: list[int] = []
    with tempfile.TemporaryDirectory(prefix="wan-dist-slurm-") as d:
        cmd = ["srun", "--kill-on-bad-exit=1", f"--nodes={len(nodes)}", f"--ntasks={len(nodes)}",
               "--ntasks-per-node=1", sys.executable, "-m", "wan_dist.slurm.job", "--node", str(nproc), endpoint,
               *overrides]
        proc = subprocess.Popen(cmd, env={**env, OUTCOME_ENV: d})

        def forward(signum, frame):
            stopped.append(signum)
            try:
                proc.send_signal(signal.SIGUSR1)
            except ProcessLookupError:
                pass

        previous = {s: signal.signal(s, forward) for s in STOP_SIGNALS}
        try:
            rc = proc.wait()
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
        head = _read_code(Path(d) / "node0.json")
    if head is None:
        say(f"node 0 recorded no outcome (srun exit {rc})")
        return int(ExitCode.TEMPFAIL if stopped else ExitCode.CRASH)
    return int(worst([head, ExitCode.CRASH if rc != 0 else ExitCode.OK]))


def _read_code(path: Path) -> int | None:
    try:
        return int(json.loads(path.read_text())["code"])
    except (OSError, ValueError, KeyError):
        return None


def node_main(argv: list[str]) -> int:
    """One node's agent of a multi-node run (started by srun, one per node)."""
    nproc, endpoint, *overrides = argv
    env = os.environ
    local = alloc.node_addr(env.get("SLURMD_NODENAME") or socket.gethostname())
    code = supervise.main(["--nnodes", env["SLURM_JOB_NUM_NODES"], "--nproc_per_node", nproc,
                           "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", env["SLURM_JOB_ID"],
                           # torchrun's rank-0 agent publishes this as MASTER_ADDR (default: its FQDN, which need
                           # not resolve on the other nodes)
                           "--local-addr", local, str(RUN_PY), *overrides])
    d = env.get(OUTCOME_ENV)
    if d and os.path.isdir(d):        # the head's temp dir: visible on node 0 (and on any node sharing its /tmp)
        tmp = Path(d) / f".node{env.get('SLURM_NODEID', '0')}.{os.getpid()}"
        tmp.write_text(json.dumps({"code": code, "node": env.get("SLURMD_NODENAME")}))
        os.replace(tmp, Path(d) / f"node{env.get('SLURM_NODEID', '0')}.json")
    return 0 if code in CLEAN else code


def settle(code: ExitCode, env) -> int:
    """The job's exit (and its requeue on 75), with one line saying what happens next."""
    if code == ExitCode.TEMPFAIL:
        restarts = int(env.get("SLURM_RESTART_COUNT") or 0)
        limit = int(env.get(MAX_REQUEUES_ENV) or DEFAULT_MAX_REQUEUES)
        if restarts >= limit:
            say(f"exit 75 after {restarts} requeue(s) ({MAX_REQUEUES_ENV}={limit}): not requeued again; "
                "submit the same command again to go on (it resumes)")
            return int(code)
        target = slurm_job(env)
        say(f"exit 75 ({code.meaning}): requeueing job {target} (restart {restarts + 1}); the rerun resumes")
        # on success slurmctld makes the job PENDING again and kills this process; returning means it failed
        p = subprocess.run(["scontrol", "requeue", target], capture_output=True, text=True, timeout=120,
                           stdin=subprocess.DEVNULL)
        if p.returncode != 0:
            say(f"scontrol requeue {target} failed ({p.stderr.strip() or p.returncode}): the job ends with 75; "
                "submit with --requeue (a site may also disable requeueing: JobRequeue=0)")
        return int(code)
    what = {ExitCode.USAGE: "fix the input named above; nothing is retried",
            ExitCode.ITEMS_FAILED: "not retried; a rerun with batch.retry_failed=true retries the failed items",
            ExitCode.IOERR: "free space in out_dir, then submit again (it resumes)",
            ExitCode.CRASH: "see the traceback above"}.get(code)
    if what:
        say(f"exit {int(code)} ({code.meaning}): {what}")
    return int(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
