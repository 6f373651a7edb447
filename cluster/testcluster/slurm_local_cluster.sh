#!/usr/bin/env bash
# A real Slurm cluster on this machine for tests: one slurmctld and two emulated nodes (slurmd -N node1,
# slurmd -N node2, both NodeAddr=127.0.0.1 on distinct ports), authenticated by a private munged.
#
#   slurm_local_cluster.sh install         apt-get install slurmctld slurmd slurm-client munge (root)
#   slurm_local_cluster.sh start [DIR]     write DIR/slurm.conf, start munged, slurmctld, 2 x slurmd
#   slurm_local_cluster.sh stop  [DIR]     stop exactly the daemons recorded in DIR/pids/
#   slurm_local_cluster.sh env   [DIR]     print `export SLURM_CONF=...` for client commands
#
# DIR defaults to $MNEMOS_SLURM_DIR or /tmp/mnemos-slurm. Ports: $MNEMOS_SLURM_PORT (slurmctld,
# default 16817) and the next two for the nodes. Nothing under /etc is touched: clients find the
# cluster through SLURM_CONF=DIR/slurm.conf. Everything runs as the invoking user (root in CI).
set -euo pipefail

cmd=${1:-}
DIR=$(realpath -m "${2:-${MNEMOS_SLURM_DIR:-/tmp/mnemos-slurm}}")
PORT=${MNEMOS_SLURM_PORT:-16817}
NODES=(node1 node2)
CPUS=${MNEMOS_SLURM_CPUS:-2}

die() { echo "slurm_local_cluster: $*" >&2; exit 1; }

install_packages() {
    local missing=()
    for bin in slurmctld slurmd sbatch munged; do command -v "$bin" >/dev/null || missing+=("$bin"); done
    [ ${#missing[@]} -eq 0 ] && { echo "slurm and munge already installed"; return 0; }
    [ "$(id -u)" = 0 ] || die "installing needs root: apt-get install slurmctld slurmd slurm-client munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # policy-rc.d 101: the packages must not start system-wide daemons; we start our own.
    local policy=/usr/sbin/policy-rc.d created=0
    if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; created=1; fi
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge
    [ "$created" = 1 ] && rm -f "$policy"
    return 0
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

write_conf() {
    local user; user=$(id -un)
    cat > "$DIR/slurm.conf" <<CONF
# Written by slurm_local_cluster.sh: a two-node test cluster on 127.0.0.1.
ClusterName=mnemostest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$PORT
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/munge
# cred_expire also holds a requeued job back before it may start again (default 120 s): shortened so
# preemption tests resume in seconds.
AuthInfo=socket=$DIR/munge/munge.socket,cred_expire=20
CredType=cred/munge
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/pids/slurmctld.pid
SlurmdPidFile=$DIR/pids/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=5,sched_interval=5
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=900
KillWait=10
InactiveLimit=0
MessageTimeout=30
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.txt
PlugStackConfig=$DIR/plugstack.conf
NodeName=node1 NodeHostname=$(hostname) NodeAddr=127.0.0.1 Port=$((PORT + 1)) CPUs=$CPUS RealMemory=2000 State=UNKNOWN
NodeName=node2 NodeHostname=$(hostname) NodeAddr=127.0.0.1 Port=$((PORT + 2)) CPUs=$CPUS RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes=node[1-2] Default=YES MaxTime=INFINITE State=UP
CONF
    : > "$DIR/plugstack.conf"
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local t=$1 what=$2; shift 2
    for _ in $(seq "$((t * 4))"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
    die "$what did not come up within ${t}s; logs in $DIR/log"
}

start() {
    for bin in slurmctld slurmd sbatch munged; do
        command -v "$bin" >/dev/null || die "$bin not found: run '$0 install' first"
    done
    mkdir -p "$DIR"/{ctld,log,pids,munge,spool/node1,spool/node2}
    if pid_alive "$DIR/pids/slurmctld.pid"; then echo "already running in $DIR"; return 0; fi
    chmod 700 "$DIR/munge"
    [ -f "$DIR/munge/munge.key" ] || { dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none; }
    chmod 400 "$DIR/munge/munge.key"
    write_conf
    export SLURM_CONF=$DIR/slurm.conf
    munged --force --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket" \
        --pid-file="$DIR/pids/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/seed"
    wait_for 10 munged test -S "$DIR/munge/munge.socket"
    slurmctld -i -f "$SLURM_CONF"      # -i: ignore state from an older run of this directory
    wait_for 30 slurmctld scontrol ping
    for n in "${NODES[@]}"; do slurmd -N "$n" -f "$SLURM_CONF"; done
    for n in "${NODES[@]}"; do
        wait_for 30 "slurmd $n" sh -c "sinfo -h -n $n -o %T | grep -Eq '^(idle|mixed|allocated)'"
    done
    echo "slurm test cluster up in $DIR: export SLURM_CONF=$SLURM_CONF"
}

stop_pidfile() {  # TERM the recorded pid, wait, then KILL; only ever the pid we recorded
    local f=$1 pid
    [ -f "$f" ] || return 0
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
}

stop() {
    [ -d "$DIR/pids" ] || { echo "nothing to stop in $DIR"; return 0; }
    export SLURM_CONF=$DIR/slurm.conf
    # Jobs of this cluster first, so their step daemons end with them.
    if pid_alive "$DIR/pids/slurmctld.pid"; then scancel --quiet --full -u "$(id -un)" 2>/dev/null || true; sleep 1; fi
    for n in "${NODES[@]}"; do stop_pidfile "$DIR/pids/slurmd-$n.pid"; done
    stop_pidfile "$DIR/pids/slurmctld.pid"
    stop_pidfile "$DIR/pids/munged.pid"
    echo "slurm test cluster in $DIR stopped"
}

case "$cmd" in
    install) install_packages ;;
    start) start ;;
    stop) stop ;;
    env) echo "export SLURM_CONF=$DIR/slurm.conf" ;;
    *) sed -n '2,12p' "$0"; exit 2 ;;
esac
