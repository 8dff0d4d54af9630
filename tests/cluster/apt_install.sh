#!/usr/bin/env bash
# apt_install.sh PKG... - install the Debian packages among PKG that are missing, with --no-install-recommends.
#
# Used by `make system-deps` and by slurm_up.sh. A no-op (no apt call at all) when every package is installed.
# Exit codes:
#   0  every package is installed (now or already)
#   3  some are missing and cannot be installed here: no dpkg/apt-get, not root, or apt-get failed
#      (no network, no repository). The one-line reason is the last line on stderr, prefixed "apt unavailable:".
# Other helpers may run apt at the same time: dpkg's lock is waited for (DPkg::Lock::Timeout), never broken.
set -uo pipefail
[ $# -gt 0 ] || { echo "usage: $0 PKG..." >&2; exit 2; }

missing=()
if command -v dpkg-query >/dev/null 2>&1; then
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
else
  echo "apt unavailable: no dpkg-query on this machine (not Debian-like); cannot check or install: $*" >&2
  exit 3
fi
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "apt unavailable: apt-get not found; missing packages: ${missing[*]}" >&2; exit 3
fi
if [ "$(id -u)" != 0 ]; then
  echo "apt unavailable: not root (uid $(id -u)); missing packages: ${missing[*]} (install them as root: apt-get install --no-install-recommends ${missing[*]})" >&2
  exit 3
fi

echo "[apt_install] installing ${missing[*]} (--no-install-recommends)" >&2
export DEBIAN_FRONTEND=noninteractive
LOCK=(-o DPkg::Lock::Timeout=300)
log=$(mktemp)
t0=$(date +%s.%N)
# Try without an update first only if the package lists are present (a fresh image has none: update is needed).
ok=0
updated="without apt-get update"
if ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1 \
   && apt-get "${LOCK[@]}" install -y -q --no-install-recommends "${missing[@]}" >"$log" 2>&1; then
  ok=1
fi
if [ $ok = 0 ]; then
  updated="with apt-get update"
  if apt-get "${LOCK[@]}" update -q >>"$log" 2>&1 \
     && apt-get "${LOCK[@]}" install -y -q --no-install-recommends "${missing[@]}" >>"$log" 2>&1; then
    ok=1
  fi
fi
if [ $ok = 0 ]; then
  tail -20 "$log" >&2
  # the reason goes last: callers (tests/cluster/slurm.py) show the last stderr line as the skip reason
  echo "apt unavailable: apt-get could not install ${missing[*]}: $(grep -E '^(E|Err):' "$log" | awk '!seen[$0]++' | head -3 | tr '\n' ' ')" >&2
  rm -f "$log"; exit 3
fi
rm -f "$log"
# policy-rc.d (containers) makes the postinst print "invoke-rc.d: policy-rc.d denied execution of start": expected,
# the test cluster starts its daemons itself.
echo "[apt_install] installed ${missing[*]} ($updated) in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s" >&2
exit 0
