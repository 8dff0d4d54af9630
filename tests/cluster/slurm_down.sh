#!/usr/bin/env bash
# slurm_down.sh - stop the test cluster started by slurm_up.sh, by PID files only (never by process name).
# Idempotent; a no-op when nothing runs. Always exits 0 (it runs from traps and fixture teardowns).
#   1. scancel every job (steps of running jobs survive a slurmd stop otherwise), wait up to 10 s
#   2. TERM the two slurmd, then slurmctld; KILL whatever is still alive after 10 s
#   3. TERM munged, but only when slurm_up.sh started it (marker $D/munged.ours)
# WAN_DIST_SLURM_DIR as for slurm_up.sh. WAN_DIST_SLURM_KEEP_MUNGE=1 leaves munged running.
# If another process holds $D.lock (a pytest session using the cluster: tests/cluster/slurm.py takes it), the cluster
# is left alone, unless WAN_DIST_SLURM_LOCK_HELD=1 says the caller is that holder.
set -uo pipefail
D=${WAN_DIST_SLURM_DIR:-/tmp/wan-dist-slurm}
CONF=$D/etc/slurm.conf
export SLURM_CONF=$CONF
log() { echo "[slurm_down] $*" >&2; }

if [ "${WAN_DIST_SLURM_LOCK_HELD:-0}" != 1 ] && [ -e "$D.lock" ] && command -v flock >/dev/null; then
  exec 9<"$D.lock"
  if ! flock -n 9; then log "cluster in use by another test session (lock $D.lock held): left running"; exit 0; fi
fi

alive() {   # PID COMM: exists, not a zombie, comm matches (guards against PID reuse)
  local pid=$1 comm=$2
  [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ] || return 1
  [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]
}
stop() {    # PIDFILE COMM
  local pf=$1 comm=$2 pid
  pid=$(cat "$pf" 2>/dev/null || true)
  if ! alive "$pid" "$comm"; then rm -f "$pf"; return 0; fi
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 100); do alive "$pid" "$comm" || break; sleep 0.1; done
  if alive "$pid" "$comm"; then log "$comm ($pid) ignored TERM for 10 s: KILL"; kill -KILL "$pid" 2>/dev/null; sleep 0.2; fi
  rm -f "$pf"
  log "$comm (pid $pid) stopped"
}

if alive "$(cat "$D/run/slurmctld.pid" 2>/dev/null)" slurmctld && [ -r "$CONF" ]; then
  jobs=$(timeout 10 squeue -h -o '%A' 2>/dev/null | sort -u | tr '\n' ' ')
  if [ -n "${jobs// /}" ]; then
    log "cancelling jobs: $jobs"
    # shellcheck disable=SC2086
    timeout 10 scancel $jobs 2>/dev/null
    for _ in $(seq 50); do [ -z "$(timeout 5 squeue -h -t PD,R,CG,S -o %A 2>/dev/null)" ] && break; sleep 0.2; done
  fi
fi

for pf in "$D"/run/slurmd-*.pid; do [ -e "$pf" ] && stop "$pf" slurmd; done   # node daemons first
stop "$D/run/slurmctld.pid" slurmctld

if [ "${WAN_DIST_SLURM_KEEP_MUNGE:-0}" != 1 ] && [ -e "$D/munged.ours" ]; then
  stop /run/munge/munged.pid munged
  rm -f "$D/munged.ours"
fi
exit 0
