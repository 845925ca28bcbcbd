#!/usr/bin/env bash
# A one-node SLURM cluster on localhost, for tests/test_slurm.py and for trying `--executor slurm`.
#
#   tests/slurm/local_cluster.sh up       # install (Debian: slurmctld, slurmd, slurm-client, munge) where
#                                         # missing, configure, start, wait until `sinfo` shows the node idle;
#                                         # does nothing when it already is
#   tests/slurm/local_cluster.sh status   # sinfo and the daemons' pids
#   tests/slurm/local_cluster.sh down     # stop slurmd, slurmctld and munged (the ones this script started)
#
# Meant for a container or a throw-away machine, as root, without systemd: the daemons run in the
# background as plain processes.  The node is this machine (`slurmd -C`: its real CPUs and memory),
# partition `local`; no accounting (no slurmdbd, so no `sacct`), no cgroups (proctrack/linuxproc,
# task/none).  Everything it writes: /etc/slurm/slurm.conf (only when absent or written by this
# script), state under /var/spool/slurm-longtail, logs under /var/log/slurm-longtail, pids under
# /run/slurm-longtail, and munge's key and runtime folders.
#
# Exit status: 0 the node is idle; 1 a daemon did not come up (its log's tail is printed);
# 2 impossible here (not root, no apt-get to install SLURM, a foreign slurm.conf): nothing was changed.
set -euo pipefail

MARK="# written by longtail tests/slurm/local_cluster.sh"
CONF=/etc/slurm/slurm.conf
SPOOL=/var/spool/slurm-longtail
LOGS=/var/log/slurm-longtail
PIDS=/run/slurm-longtail
PARTITION=local
# slurm-wlm's daemons and clients without its recommended plugins (42 packages, ~30 s; these: 8)
PACKAGES=(slurmctld slurmd slurm-client munge)
WAIT_S=${LT_SLURM_WAIT_S:-60}

say() { echo "[slurm-local] $*"; }
impossible() { say "cannot set up a local cluster: $*"; exit 2; }

alive() {  # alive PIDFILE: the process of a pid file is running
  [[ -s $1 ]] && kill -0 "$(cat "$1" 2>/dev/null)" 2>/dev/null
}

node_state() { sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -1; }

install_packages() {
  local missing=()
  for tool in sbatch squeue scancel srun sinfo slurmctld slurmd munged; do
    command -v "$tool" >/dev/null 2>&1 || PATH=$PATH:/usr/sbin command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  ((${#missing[@]} == 0)) && return 0
  command -v apt-get >/dev/null 2>&1 || impossible "missing ${missing[*]} and no apt-get to install ${PACKAGES[*]}"
  say "installing ${PACKAGES[*]} (missing: ${missing[*]})"
  local apt=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}")
  if ! "${apt[@]}" >/tmp/slurm-longtail-apt.log 2>&1; then  # stale package lists: update once, try again
    apt-get update -qq >>/tmp/slurm-longtail-apt.log 2>&1 || true
    "${apt[@]}" >>/tmp/slurm-longtail-apt.log 2>&1 \
      || { tail -5 /tmp/slurm-longtail-apt.log; impossible "apt-get install ${PACKAGES[*]} failed (log above)"; }
  fi
}

start_munge() {
  install -d -o munge -g munge -m 0700 /etc/munge /var/log/munge
  install -d -o munge -g munge -m 0711 /var/lib/munge
  install -d -o munge -g munge -m 0755 /run/munge
  if [[ ! -s /etc/munge/munge.key ]]; then
    say "creating the munge key"
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
  fi
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    return 0
  fi
  say "starting munged"
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 50); do
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  tail -5 /var/log/munge/munged.log || true
  say "munged did not start"; exit 1
}

write_conf() {  # prints "changed" when the file was (re)written
  local hw cpus mem defmem text
  hw=$(slurmd -C | head -1)                      # NodeName=... CPUs=.. ... RealMemory=..
  cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$hw")
  mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
  defmem=$((mem / cpus))                          # a job that names no memory gets its CPUs' share
  text="$MARK
# A one-node cluster on localhost: no accounting (sacct has no data), no cgroups.
ClusterName=longtail
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d
SlurmctldPidFile=$PIDS/slurmctld.pid
SlurmdPidFile=$PIDS/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$defmem
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
ReturnToService=2
MinJobAge=600
KillWait=5
SlurmdTimeout=60
$hw NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP"
  if [[ -f $CONF ]] && [[ "$(cat "$CONF")" == "$text" ]]; then
    return 0
  fi
  mkdir -p "$(dirname "$CONF")"
  printf '%s\n' "$text" >"$CONF"
  echo changed
}

stop_daemons() {
  local name pidfile
  for name in slurmd slurmctld; do
    pidfile=$PIDS/$name.pid
    if alive "$pidfile"; then
      say "stopping $name ($(cat "$pidfile"))"
      kill "$(cat "$pidfile")"
      for _ in $(seq 100); do alive "$pidfile" || break; sleep 0.1; done
    fi
    rm -f "$pidfile"
  done
}

up() {
  ((EUID == 0)) || impossible "run as root (it installs packages, writes /etc/slurm and starts daemons)"
  if [[ -f $CONF ]] && ! grep -qxF "$MARK" "$CONF"; then
    impossible "$CONF exists and was not written by this script; this machine has its own SLURM set-up"
  fi
  install_packages
  export PATH=$PATH:/usr/sbin
  NODE=$(hostname -s)
  start_munge
  mkdir -p "$SPOOL/ctld" "$SPOOL/d" "$LOGS" "$PIDS"
  if [[ -n "$(write_conf)" ]]; then
    say "wrote $CONF (node $NODE, $(grep -o 'CPUs=[0-9]*' "$CONF"), $(grep -o 'RealMemory=[0-9]*' "$CONF") MB)"
    stop_daemons  # a new node definition needs fresh daemons
  fi
  if ! alive "$PIDS/slurmctld.pid"; then
    say "starting slurmctld"
    slurmctld || { tail -20 "$LOGS/slurmctld.log"; exit 1; }
  fi
  if ! alive "$PIDS/slurmd.pid"; then
    say "starting slurmd"
    slurmd || { tail -20 "$LOGS/slurmd.log"; exit 1; }
  fi
  local state=""
  for _ in $(seq $((WAIT_S * 2))); do
    state=$(node_state)
    case $state in
      idle | mixed | allocated) say "node $NODE is $state (partition $PARTITION)"; return 0 ;;
      down* | drain*) scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 0.5
  done
  say "node $NODE is not idle after ${WAIT_S}s (state: ${state:-none})"
  tail -10 "$LOGS/slurmctld.log" "$LOGS/slurmd.log" || true
  exit 1
}

status() {
  export PATH=$PATH:/usr/sbin
  for name in slurmctld slurmd; do
    if alive "$PIDS/$name.pid"; then say "$name running ($(cat "$PIDS/$name.pid"))"; else say "$name not running"; fi
  done
  sinfo 2>&1 || true
}

down() {
  ((EUID == 0)) || impossible "run as root"
  export PATH=$PATH:/usr/sbin
  stop_daemons
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "stopping munged"
    runuser -u munge -- /usr/sbin/munged --stop >/dev/null 2>&1 || true
  fi
}

case ${1:-up} in
  up) up ;;
  status) status ;;
  down) down ;;
  *) echo "usage: $0 [up|status|down]" >&2; exit 2 ;;
esac
