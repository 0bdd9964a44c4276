#!/usr/bin/env bash
# A real single-node Slurm cluster reached over SSH on 127.0.0.1, for the tests of the
# calculations through AiiDA's `core.ssh` transport and `core.slurm` scheduler.
#
#   bash .ci/cluster.sh start    # start what is down, wait until usable (a few seconds)
#   bash .ci/cluster.sh stop     # stop what this script started, nothing else
#   bash .ci/cluster.sh status   # one line; exit 0 when up, 3 when not (fully) up
#   bash .ci/cluster.sh env      # `export SLURM_CONF=...`, for Slurm commands on this machine
#
# Needs root and the Debian packages slurm-wlm, munge and openssh-server (.ci/install.sh).
# Everything it writes lives in one folder, $TRAINSPOT_CLUSTER_DIR (/var/lib/trainspot-cluster):
#
#   etc/slurm.conf        its own Slurm configuration: /etc/slurm is never read nor written
#   etc/sshd_config       its own sshd: 127.0.0.1:$TRAINSPOT_CLUSTER_SSH_PORT (2222), key only
#   ssh/id_ed25519        the client key pair, authorised for root on that sshd only
#   ssh/known_hosts       the sshd's host key, for `ssh -o UserKnownHostsFile=...`
#   spool/, log/, run/    Slurm state, logs (slurmctld, slurmd, sshd, jobcomp.txt), pid files
#
# How the Slurm commands find the configuration: slurmctld and slurmd get `-f etc/slurm.conf`,
# this script exports SLURM_CONF for itself, and the sshd sets SLURM_CONF in every session it
# opens (`SetEnv` in its config), so `sbatch`/`squeue`/`scancel` run by AiiDA over SSH (in a
# login shell) and the jobs they submit find it too, as on a real cluster where the site
# configures the environment. A site /etc/slurm/slurm.conf, if any, stays untouched.
#
# munge: a munged that already works (`munge -n | unmunge`) is used as is; otherwise one is
# started with the key the munge package created, and only that one is stopped by `stop`.
# Slurm's ports: TRAINSPOT_CLUSTER_SLURMCTLD_PORT (6817) and TRAINSPOT_CLUSTER_SLURMD_PORT (6818).
set -euo pipefail

dir="${TRAINSPOT_CLUSTER_DIR:-/var/lib/trainspot-cluster}"
ssh_port="${TRAINSPOT_CLUSTER_SSH_PORT:-2222}"
ctld_port="${TRAINSPOT_CLUSTER_SLURMCTLD_PORT:-6817}"
slurmd_port="${TRAINSPOT_CLUSTER_SLURMD_PORT:-6818}"
node=localhost
conf="$dir/etc/slurm.conf"
sshd_conf="$dir/etc/sshd_config"
key="$dir/ssh/id_ed25519"
host_key="$dir/ssh/ssh_host_ed25519_key"
known_hosts="$dir/ssh/known_hosts"
export SLURM_CONF="$conf"

log() { printf '[cluster] %s\n' "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

# ------------------------------------------------------------------------------------------------
# Processes: a pid file per daemon, and a process is ours only if its pid file says so and its
# command name matches (a stale pid file never makes the script kill an unrelated process).

pid_of() { # NAME PIDFILE -> prints the pid when that process is alive and named NAME
    local name="$1" pidfile="$2" pid
    [ -s "$pidfile" ] || return 1
    pid="$(tr -dc '0-9' <"$pidfile")"
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] || return 1
    echo "$pid"
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

ssh_cmd() {
    ssh -i "$key" -p "$ssh_port" -o BatchMode=yes -o StrictHostKeyChecking=yes \
        -o UserKnownHostsFile="$known_hosts" -o ConnectTimeout=3 -o LogLevel=ERROR \
        root@127.0.0.1 "$@"
}

node_state() { sinfo --noheader --Node --nodes="$node" --format=%t 2>/dev/null | head -n1; }

# ------------------------------------------------------------------------------------------------
# Configuration, written on every start (the files are the script's own).

write_files() {
    mkdir -p "$dir"/{etc,ssh,run,log,spool/slurmctld,spool/slurmd}
    chmod 700 "$dir" "$dir/ssh"
    [ -f "$key" ] || ssh-keygen -q -t ed25519 -N '' -C trainspot-cluster -f "$key"
    [ -f "$host_key" ] || ssh-keygen -q -t ed25519 -N '' -C trainspot-cluster-host -f "$host_key"
    cp "$key.pub" "$dir/ssh/authorized_keys"
    chmod 600 "$dir/ssh/authorized_keys"
    echo "[127.0.0.1]:$ssh_port $(cut -d' ' -f1,2 "$host_key.pub")" >"$known_hosts"

    local cpus mem
    # the real layout (sockets, cores, threads) as slurmd sees it, else just the CPU count
    cpus="$(slurmd -C 2>/dev/null | head -n1 | grep -o \
        -E '(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=[0-9]+' | xargs)" || true
    [[ "$cpus" == CPUs=* ]] || cpus="CPUs=$(nproc)"
    # 90% of the memory, in MB: a RealMemory above the real one would drain the node.
    mem="$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"
    cat >"$conf.tmp" <<EOF
# Written by aiida-trainspot .ci/cluster.sh: a single-node test cluster, no cgroups, no accounting.
ClusterName=trainspot
SlurmctldHost=$node
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$dir/spool/slurmctld
SlurmdSpoolDir=$dir/spool/slurmd
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/log/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
InactiveLimit=0
KillWait=5
MinJobAge=300
NodeName=$node NodeAddr=127.0.0.1 $cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$conf.tmp" "$conf"

    cat >"$sshd_conf" <<EOF
# Written by aiida-trainspot .ci/cluster.sh: root, by key only, on the loopback interface only.
Port $ssh_port
ListenAddress 127.0.0.1
HostKey $host_key
PidFile $dir/run/sshd.pid
AuthorizedKeysFile $dir/ssh/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
# The key files may live under a world-writable folder (TRAINSPOT_CLUSTER_DIR=/tmp/...).
StrictModes no
# Every session, AiiDA's login shells included, finds the cluster's Slurm configuration.
SetEnv SLURM_CONF=$conf
Subsystem sftp internal-sftp
EOF
}

# ------------------------------------------------------------------------------------------------

start_munge() {
    if munge_works; then
        return
    fi
    [ -f /etc/munge/munge.key ] || die "no /etc/munge/munge.key: reinstall the munge package"
    mkdir -p /run/munge
    chown munge:munge /run/munge
    chmod 755 /run/munge
    log 'starting munged'
    # --force: no munged works (checked above), so a socket left behind is stale
    runuser -u munge -- /usr/sbin/munged --force 9>&-
    local pid
    pid="$(pid_of munged /run/munge/munged.pid)" || die 'munged did not start'
    echo "$pid" >"$dir/run/munged.pid"
    for _ in $(seq 50); do
        munge_works && return
        sleep 0.1
    done
    die 'munged runs but `munge -n | unmunge` fails'
}

start_slurm() {
    if ! pid_of slurmctld "$dir/run/slurmctld.pid" >/dev/null; then
        port_in_use "$ctld_port" &&
            die "port $ctld_port is in use (another slurmctld?): set TRAINSPOT_CLUSTER_SLURMCTLD_PORT"
        log 'starting slurmctld'
        slurmctld -f "$conf" -i 9>&-
    fi
    if ! pid_of slurmd "$dir/run/slurmd.pid" >/dev/null; then
        port_in_use "$slurmd_port" &&
            die "port $slurmd_port is in use (another slurmd?): set TRAINSPOT_CLUSTER_SLURMD_PORT"
        log 'starting slurmd'
        slurmd -f "$conf" -N "$node" 9>&-
    fi
    local state='' resumed=0
    for i in $(seq 300); do
        state="$(node_state)" || true
        case "$state" in
        idle | mix | alloc) return ;;
        drain* | drng | down*)
            # a drained or down node from an earlier run: its reason no longer applies
            if [ "$resumed" -eq 0 ] && [ "$i" -gt 20 ]; then
                scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 || true
                resumed=1
            fi
            ;;
        esac
        sleep 0.1
    done
    die "node $node is '${state:-unknown}' after 30 s, not idle: see $dir/log/slurmctld.log, slurmd.log"
}

start_sshd() {
    if ! pid_of sshd "$dir/run/sshd.pid" >/dev/null; then
        port_in_use "$ssh_port" &&
            die "port $ssh_port is in use by another program: set TRAINSPOT_CLUSTER_SSH_PORT"
        mkdir -p /run/sshd
        chmod 755 /run/sshd
        /usr/sbin/sshd -t -f "$sshd_conf" || die "sshd rejects $sshd_conf"
        log "starting sshd on 127.0.0.1:$ssh_port"
        /usr/sbin/sshd -f "$sshd_conf" -E "$dir/log/sshd.log" 9>&-
    fi
    local out=''
    for _ in $(seq 100); do
        # as AiiDA does: a login shell over SSH must find the Slurm configuration
        out="$(ssh_cmd "bash -l -c 'squeue --noheader >/dev/null && echo ok'" 2>&1)" &&
            [ "$out" = ok ] && return
        sleep 0.1
    done
    die "ssh root@127.0.0.1:$ssh_port does not work: $out (see $dir/log/sshd.log)"
}

stop_pidfile() { # NAME PIDFILE: send TERM; prints the pid to wait for
    local pid
    if pid="$(pid_of "$1" "$2")"; then
        log "stopping $1 ($pid)"
        kill -TERM "$pid" 2>/dev/null || true
        echo "$pid"
    fi
}

status_line() {
    local parts=() up=1 pid name state munge_owner
    for name in slurmctld slurmd sshd; do
        if pid="$(pid_of "$name" "$dir/run/$name.pid")"; then
            parts+=("$name $pid")
        else
            parts+=("$name -")
            up=0
        fi
    done
    if pid="$(pid_of munged "$dir/run/munged.pid")"; then
        munge_owner="munged $pid (ours)"
    elif munge_works; then
        munge_owner='munged external'
    else
        munge_owner='munged -'
        up=0
    fi
    state="$( ((up)) && node_state || true)"
    case "$state" in idle | mix | alloc) ;; *) up=0 ;; esac
    local joined
    printf -v joined '%s, ' "${parts[@]}"
    if ((up)); then
        echo "trainspot-cluster up: $joined$munge_owner; node $node $state;" \
            "ssh root@127.0.0.1:$ssh_port -i $key; SLURM_CONF=$conf"
        return 0
    fi
    echo "trainspot-cluster down: $joined$munge_owner; node $node ${state:--}; dir $dir"
    return 3
}

need_root_and_packages() {
    [ "$(id -u)" -eq 0 ] || die 'must run as root (SlurmUser=root, ssh as root)'
    local missing=() cmd
    for cmd in slurmctld slurmd sinfo munge munged ssh ssh-keygen /usr/sbin/sshd; do
        command -v "$cmd" >/dev/null || missing+=("$cmd")
    done
    [ ${#missing[@]} -eq 0 ] ||
        die "missing ${missing[*]}: install slurm-wlm munge openssh-server (bash .ci/install.sh)"
}

lock() { # fd 9, closed for every daemon started (`9>&-`): they must not inherit the lock
    mkdir -p "$dir"
    exec 9>"$dir/.lock"
    flock -w 120 9 || die "another cluster.sh holds $dir/.lock"
}

case "${1:-}" in
start)
    need_root_and_packages
    lock
    t0=$(date +%s.%N)
    if ! pid_of slurmctld "$dir/run/slurmctld.pid" >/dev/null ||
        ! pid_of slurmd "$dir/run/slurmd.pid" >/dev/null ||
        ! pid_of sshd "$dir/run/sshd.pid" >/dev/null; then
        write_files
    fi
    start_munge
    start_slurm
    start_sshd
    log "ready in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}') s"
    status_line
    ;;
stop)
    [ -d "$dir" ] || {
        echo "trainspot-cluster down: nothing in $dir"
        exit 0
    }
    lock
    pids=()
    for name in sshd slurmd slurmctld munged; do
        pid="$(stop_pidfile "$name" "$dir/run/$name.pid")" && [ -n "$pid" ] && pids+=("$pid")
    done
    # slurmctld saves its state on SIGTERM and takes a few seconds; all stop in parallel.
    for _ in $(seq 300); do
        alive=0
        for pid in "${pids[@]}"; do [ -d "/proc/$pid" ] && alive=1; done
        ((alive)) || break
        sleep 0.1
    done
    for pid in "${pids[@]}"; do
        if [ -d "/proc/$pid" ]; then
            log "killing $pid (no exit after 30 s)"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    rm -f "$dir/run/munged.pid"
    status_line || true
    ;;
status)
    status_line
    ;;
env)
    echo "export SLURM_CONF=$conf"
    ;;
*)
    echo "usage: $0 start|stop|status|env" >&2
    exit 2
    ;;
esac
