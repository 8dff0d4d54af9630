#!/usr/bin/env bash
# sacct stand-in for the test cluster (no slurmdbd, so the real sacct only says "accounting storage is disabled").
# Installed by slurm_up.sh as $WAN_DIST_SLURM_DIR/bin/sacct; put that dir first on PATH to use it.
# Answers what submitit asks:   sacct -o JobID,State,NodeList --parsable2 -j ID [-j ID ...]
# from slurmctld's in-memory records (squeue -t all). A job already purged from memory (finished more than MinJobAge
# ago) is reported as PURGED, which submitit counts as finished: its result pickle decides success, and a missing
# one raises UncompletedJobError instead of polling forever.
ids=()
while [ $# -gt 0 ]; do
  case "$1" in
    -j|--jobs) ids+=("${2//,/ }"); shift 2 ;;
    -j*) ids+=("${1#-j}"); shift ;;
    --jobs=*) ids+=("${1#--jobs=}"); shift ;;
    *) shift ;;
  esac
done
echo "JobID|State|NodeList"
for id in ${ids[*]//,/ }; do
  if ! out=$(squeue -h -t all -j "$id" -o '%i|%T|%N' 2>&1); then
    case "$out" in *"Invalid job id"*) echo "$id|PURGED|" ;; esac
    continue
  fi
  printf '%s\n' "$out"
done
exit 0
