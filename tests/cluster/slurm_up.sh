#!/usr/bin/env bash
# slurm_up.sh - bring up the private two-node Slurm test cluster on this host, idempotently.
#
#   munged (system socket /run/munge) + slurmctld + two slurmd: `slurmd -N n1`, `slurmd -N n2`, both on
#   NodeAddr=127.0.0.1 with their own Port. Partition "test" holds both nodes. Debian 12, root, no systemd.
#
# The config is private: $WAN_DIST_SLURM_DIR/etc/slurm.conf (/etc/slurm is never touched). Clients need
#   export SLURM_CONF=$WAN_DIST_SLURM_DIR/etc/slurm.conf
# (the last line this script prints on stdout is exactly that). Jobs inherit the submitter's environment
# (sbatch's default --export=ALL), so SLURM_CONF and PATH (the project's .venv) reach the job and its steps.
#
# Installs slurmctld slurmd slurm-client munge with --no-install-recommends when missing (apt_install.sh).
# Safe to run again (running daemons are kept; a changed config restarts the Slurm daemons), after a kill -9
# (stale PID files are recognised by /proc/PID/comm), and on a fresh machine. Daemons get stdin/stdout/stderr on
# /dev/null and no other inherited fd, so `out=$(slurm_up.sh)` or a CI pipe returns as soon as this script ends.
# Stop with slurm_down.sh (by PID files only).
#
# Exit codes: 0 up; 3 packages missing and apt unavailable, or not root (reason: last stderr line; the tests skip);
# 1 anything else.
#
# Knobs (environment):
#   WAN_DIST_SLURM_DIR        state, spool, logs, PID files, config   (default /tmp/wan-dist-slurm)
#   WAN_DIST_SLURM_CPUS       CPUs each node advertises (default 4; more than nproc = oversubscribed through
#                             SlurmdParameters=config_overrides: 3 array tasks x 2 ranks fit on a 2-core host)
#   WAN_DIST_SLURM_PORT       slurmctld port; the nodes use PORT+1, PORT+2   (default 17000 -> 17001, 17002)
#   WAN_DIST_SLURM_MIN_JOB_AGE  MinJobAge (default 5: `sbatch --wait` polls every 2 s, finished jobs leave
#                             squeue/scontrol 5-65 s after they end)
#   WAN_DIST_SLURM_EXTRA      extra slurm.conf lines (e.g. "RequeueExit=75"), for experiments
#   WAN_DIST_SLURM_CLEAN=1    wipe the controller's saved state first (job ids restart at 1; only while it is down)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
D=${WAN_DIST_SLURM_DIR:-/tmp/wan-dist-slurm}
CONF=$D/etc/slurm.conf
CPUS=${WAN_DIST_SLURM_CPUS:-4}
PORT=${WAN_DIST_SLURM_PORT:-17000}
MIN_JOB_AGE=${WAN_DIST_SLURM_MIN_JOB_AGE:-5}
NODES=(n1 n2)
PARTITION=test
PKGS=(slurmctld slurmd slurm-client munge)
log() { echo "[slurm_up] $*" >&2; }
die() { echo "[slurm_up] ERROR: $*" >&2; exit 1; }
T0=$(date +%s%N)
elapsed() { echo "$(( ($(date +%s%N) - T0) / 1000000 )) ms"; }

# ---- 1. packages (exit 3 = cannot install: the caller skips) ----------------------------------------------
bash "$HERE/apt_install.sh" "${PKGS[@]}" || exit $?
[ "$(id -u)" = 0 ] || { echo "cannot start: the test cluster runs its daemons as root; this is uid $(id -u)" >&2; exit 3; }

# ---- helpers ------------------------------------------------------------------------------------------------
alive() {   # PID COMM: the process exists, is not a zombie, and its comm matches (guards against PID reuse)
  local pid=$1 comm=$2
  [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ] || return 1
  [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]
}
pid_in() { cat "$1" 2>/dev/null || true; }
# Run a daemonizing command with stdio on /dev/null and every inherited fd > 2 closed, so the daemon never keeps a
# caller's pipe open (CI runners and subprocess.run(capture_output=True) wait for EOF on those).
spawn() {
  ( for fd in /proc/$BASHPID/fd/*; do
      fd=${fd##*/}; [ "$fd" -gt 2 ] 2>/dev/null && eval "exec $fd>&-" 2>/dev/null || true
    done
    exec "$@" </dev/null >/dev/null 2>&1 )
}
stop_pid() {  # PIDFILE COMM: TERM, wait up to 10 s, KILL
  local pid; pid=$(pid_in "$1")
  alive "$pid" "$2" || { rm -f "$1"; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do alive "$pid" "$2" || break; sleep 0.1; done
  alive "$pid" "$2" && kill -KILL "$pid" 2>/dev/null || true
  rm -f "$1"
  log "stopped $2 (pid $pid) for a restart"
}

# ---- 2. directories -------------------------------------------------------------------------------------------
if [ "${WAN_DIST_SLURM_CLEAN:-0}" = 1 ] && ! alive "$(pid_in "$D/run/slurmctld.pid")" slurmctld; then
  log "wiping saved controller state in $D/ctld"
  rm -rf "$D/ctld" "$D/spool"
fi
mkdir -p "$D/etc" "$D/ctld" "$D/log" "$D/run" "$D/bin"
for n in "${NODES[@]}"; do mkdir -p "$D/spool/$n"; done

# ---- 3. munge (the system daemon; shared with anything else on the host that uses munge) ----------------------
if [ ! -s /etc/munge/munge.key ]; then
  log "creating /etc/munge/munge.key"
  mkdir -p /etc/munge
  if command -v mungekey >/dev/null; then mungekey --create --force --keyfile=/etc/munge/munge.key
  else dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; fi
fi
chown munge:munge /etc/munge /etc/munge/munge.key
chmod 700 /etc/munge; chmod 600 /etc/munge/munge.key
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge
chmod 755 /run/munge
if alive "$(pid_in /run/munge/munged.pid)" munged; then
  log "munged already running (pid $(cat /run/munge/munged.pid))"
else
  rm -f /run/munge/munged.pid
  # munged refuses to run as root with a key owned by munge ("Keyfile is insecure"): run it as munge
  spawn runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 100); do [ -S /run/munge/munge.socket.2 ] && munge -n </dev/null >/dev/null 2>&1 && break; sleep 0.1; done
  munge -n </dev/null | unmunge >/dev/null 2>&1 || die "munged did not come up; see /var/log/munge/munged.log"
  touch "$D/munged.ours"     # slurm_down.sh stops munged only when this script started it
  log "munged started (pid $(cat /run/munge/munged.pid))"
fi

# ---- 4. slurm.conf ----------------------------------------------------------------------------------------------
CTLD_HOST=$(hostname -s)     # slurmctld checks that SlurmctldHost names this host
OVERRIDES=""
[ "$CPUS" -gt "$(nproc)" ] && OVERRIDES="SlurmdParameters=config_overrides"
NODE_LINES=""
i=0
for n in "${NODES[@]}"; do
  i=$((i + 1))
  # RealMemory stays tiny: both slurmd report the whole host's memory, and memory is not a scheduled resource
  # here (CR_CPU). The node's real name is the NodeName; NodeAddr is what other nodes and clients connect to.
  NODE_LINES+="NodeName=$n NodeAddr=127.0.0.1 NodeHostname=$CTLD_HOST Port=$((PORT + i)) CPUs=$CPUS RealMemory=1000 State=UNKNOWN"$'\n'
done
NEW=$(mktemp)
cat > "$NEW" <<EOF
# generated by tests/cluster/slurm_up.sh - private two-node wan-dist test cluster (do not edit; rerun the script)
ClusterName=wandisttest
SlurmctldHost=${CTLD_HOST}(127.0.0.1)
SlurmctldPort=$PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=10
StateSaveLocation=$D/ctld
SlurmdSpoolDir=$D/spool/%n
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd-%n.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MinJobAge=$MIN_JOB_AGE
KillWait=5
JobRequeue=1
${WAN_DIST_SLURM_EXTRA:-}
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SwitchType=switch/none
$OVERRIDES
${NODE_LINES}PartitionName=$PARTITION Nodes=$(IFS=,; echo "${NODES[*]}") Default=YES MaxTime=INFINITE State=UP
EOF
conf_changed=0
if ! cmp -s "$NEW" "$CONF"; then
  install -m 644 "$NEW" "$CONF"; conf_changed=1; log "wrote $CONF"
fi
rm -f "$NEW"
export SLURM_CONF=$CONF

# ---- 5. daemons -------------------------------------------------------------------------------------------------
# Ports, paths and node lines are read at start only: a changed config restarts the Slurm daemons (saved state
# and queued jobs survive).
if [ $conf_changed = 1 ]; then
  for n in "${NODES[@]}"; do stop_pid "$D/run/slurmd-$n.pid" slurmd; done
  stop_pid "$D/run/slurmctld.pid" slurmctld
fi
if alive "$(pid_in "$D/run/slurmctld.pid")" slurmctld; then
  log "slurmctld already running (pid $(cat "$D/run/slurmctld.pid"))"
else
  rm -f "$D/run/slurmctld.pid"
  spawn /usr/sbin/slurmctld -f "$CONF"
fi
for _ in $(seq 150); do scontrol ping 2>/dev/null | grep -q 'is UP' && break; sleep 0.1; done
scontrol ping 2>/dev/null | grep -q 'is UP' || { tail -20 "$D/log/slurmctld.log" >&2; die "slurmctld not up (log above)"; }
log "slurmctld up (pid $(cat "$D/run/slurmctld.pid"))"

for n in "${NODES[@]}"; do
  if alive "$(pid_in "$D/run/slurmd-$n.pid")" slurmd; then
    log "slurmd $n already running (pid $(cat "$D/run/slurmd-$n.pid"))"
  else
    rm -f "$D/run/slurmd-$n.pid"
    spawn /usr/sbin/slurmd -f "$CONF" -N "$n"
  fi
done

# ---- 6. wait until both nodes are usable --------------------------------------------------------------------------
ready=0
for i in $(seq 200); do
  ready=1
  while read -r n st; do
    case "$st" in
      idle|mixed|allocated|completing) ;;
      *) ready=0
         # a node left down/drained by an earlier kill: resume it once its slurmd has registered
         case "$st" in down*|drain*|fail*) [ "$i" -gt 20 ] && scontrol update NodeName="$n" State=RESUME 2>/dev/null || true ;; esac ;;
    esac
  done < <(sinfo -h -N -p "$PARTITION" -o '%N %T' 2>/dev/null)
  [ "$(sinfo -h -N -p "$PARTITION" -o '%N' 2>/dev/null | wc -l)" -eq ${#NODES[@]} ] || ready=0
  [ $ready = 1 ] && break
  sleep 0.1
done
if [ $ready != 1 ]; then
  sinfo -N -p "$PARTITION" >&2 || true
  for n in "${NODES[@]}"; do echo "--- $D/log/slurmd-$n.log" >&2; tail -10 "$D/log/slurmd-$n.log" >&2 || true; done
  die "nodes not ready after 20 s"
fi

# ---- 7. sacct stand-in (no accounting daemon here): put $D/bin first on PATH to use it ---------------------------
install -m 755 "$HERE/sacct_shim.sh" "$D/bin/sacct"

log "ready in $(elapsed): $(sinfo -h -p "$PARTITION" -o '%P %a %D nodes %T %N CPUs/node=%c' | tr '\n' ' ')"
log "logs: $D/log   sacct shim: $D/bin/sacct"
echo "export SLURM_CONF=$CONF"
