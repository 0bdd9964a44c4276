#!/usr/bin/env bash
# Install everything aiida-trainspot needs on a bare Debian 12 machine, as root (or with sudo):
# - the Debian packages below;
# - a virtual environment in .venv: torch 2.13.0 (CPU) first, then the package with the exact
#   versions of .ci/constraints.txt;
# - the two servers of the `services` tests, configured here, not taken from the machine image:
#   PostgreSQL: its cluster started and a role `trainspot_test` that logs in with a password over
#   127.0.0.1 (scram-sha-256), its settings written to $TRAINSPOT_SERVICES_ENV
#   (/etc/aiida-trainspot/services.env, mode 600), where tests/services.py reads them;
#   RabbitMQ: AMQP (5672), the Erlang distribution (25672) and epmd (4369) on loopback only.
#
# Idempotent: a second run checks what is there, changes nothing and returns in seconds.
# `source .ci/install.sh` defines the functions without running anything.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${TRAINSPOT_VENV:-$root/.venv}"
python="${PYTHON:-python3}"
services_env="${TRAINSPOT_SERVICES_ENV:-/etc/aiida-trainspot/services.env}"
pg_role=trainspot_test
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

# Each package and what it is for (docs/installation.md has the same table).
debian_packages=(
    python3               # the interpreter of the virtual environment (Python 3.11)
    python3-venv          # `python3 -m venv` with pip (ensurepip); a stock Debian lacks it
    ca-certificates       # CA certificates for HTTPS downloads (PyPI)
    quantum-espresso      # pw.x: ab initio labelling
    quantum-espresso-data # 71 UPF pseudopotentials in /usr/share/espresso/pseudo
    lammps                # /usr/bin/lmp: molecular dynamics exploration
    openmpi-bin           # mpirun for pw.x and lmp
    postgresql            # storage of production profiles (core.psql_dos); `services` tests
    rabbitmq-server       # broker of production profiles (core.rabbitmq); `services` tests
    slurm-wlm             # single-node Slurm cluster of the scale-out tests (.ci/cluster.sh)
    munge                 # authentication between Slurm's daemons and commands
    openssh-server        # sshd (and ssh) for the core.ssh transport tests (.ci/cluster.sh)
    graphviz              # `verdi node graph generate`: provenance graphs, tested, in the docs
)

log() { printf '[install] %s\n' "$*"; }
die() {
    log "ERROR: $*" >&2
    exit 1
}
with_systemd() { [ -d /run/systemd/system ]; }

install_debian_packages() {
    local missing=()
    for pkg in "${debian_packages[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        log "Debian packages present: ${debian_packages[*]}"
        return
    fi
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get: install them by hand"
    log "installing Debian packages: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

install_python_packages() {
    # The stamp records what the venv was built from; a matching stamp means nothing to do.
    local stamp="$venv/.trainspot-install-stamp"
    local want
    want="$(cat pyproject.toml .ci/constraints.txt | sha256sum | cut -d' ' -f1)"
    if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        log "virtual environment up to date: $venv"
        return
    fi
    [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
    local pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
    "${pip[@]}" install -U 'pip>=24'
    # torch alone and first: pip takes the CPU wheel; a range would pull a CUDA build.
    "${pip[@]}" install 'torch==2.13.0'
    "${pip[@]}" install -c .ci/constraints.txt -e '.[dev,docs]'
    "$venv/bin/python" -m pip check
    echo "$want" > "$stamp"
    log "virtual environment ready: $venv"
}

# ------------------------------------------------------------------------------------------------
# Files and sockets.

write_file() { # FILE MODE CONTENT: (re)write FILE as root when its content differs
    local file="$1" mode="$2" content="$3"
    [ "$($sudo cat "$file" 2>/dev/null)" != "$content" ] || return 0
    $sudo mkdir -p "$(dirname "$file")"
    (umask 077 && printf '%s\n' "$content" | $sudo tee "$file" >/dev/null)
    $sudo chmod "$mode" "$file"
    log "wrote $file"
}

listeners() { # PORT...: the listening sockets there, as /proc/net/tcp writes them (hex ADDRESS:PORT)
    local ports=" " port
    for port in "$@"; do ports+="$(printf '%04X' "$port") "; done
    awk -v ports="$ports" '$4 == "0A" { split($2, a, ":"); if (index(ports, " " a[2] " ")) print $2 }' \
        /proc/net/tcp /proc/net/tcp6 2>/dev/null || true
}

beyond_loopback() { # the lines of stdin (`listeners`) whose address is not 127.0.0.0/8 nor ::1
    grep -Ev '^([0-9A-F]{6}7F|0{24}01000000|0{16}FFFF0000[0-9A-F]{6}7F):' || true
}
exposed() { listeners "$@" | beyond_loopback; } # PORT...

wait_for() { # SECONDS COMMAND...: run COMMAND every half second until it succeeds; 1 on timeout
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.5
    done
}

# ------------------------------------------------------------------------------------------------
# PostgreSQL: a password role for the tests, whatever the image trusts.

as_postgres() { # as the postgres user, through the Unix socket (peer authentication)
    (cd / && $sudo runuser -u postgres -- env -u PGHOST -u PGHOSTADDR -u PGPORT -u PGUSER \
        -u PGPASSWORD -u PGDATABASE -u PGSERVICE "$@")
}

pg_login() { # PORT PASSWORD: does $pg_role log in with PASSWORD over TCP on 127.0.0.1?
    [ "$(PGPASSWORD="$2" PGCONNECT_TIMEOUT=5 psql -XAtqw -h 127.0.0.1 -p "$1" -U "$pg_role" \
        -d postgres -c 'SELECT 1' 2>/dev/null)" = 1 ]
}

setup_postgres() {
    # The cluster on $PGPORT, else the first one; a stock install creates <version>/main.
    local line version cluster port status
    line="$(pg_lsclusters -h | awk -v port="${PGPORT:-}" 'port == "" || $3 == port' | head -n 1)"
    if [ -z "$line" ] && [ -z "${PGPORT:-}" ]; then
        version="$(ls /usr/lib/postgresql | sort -V | tail -n 1)"
        log "PostgreSQL: creating cluster $version/main"
        $sudo pg_createcluster "$version" main >/dev/null
        line="$(pg_lsclusters -h | head -n 1)"
    fi
    [ -n "$line" ] || die "PostgreSQL: no cluster on port ${PGPORT:-}"
    read -r version cluster port status _ <<<"$line"
    if [[ "$status" != online* ]]; then
        log "PostgreSQL: starting cluster $version/$cluster"
        # through systemd where it runs; in a container pg_ctlcluster starts the server itself
        $sudo pg_ctlcluster "$version" "$cluster" start
    fi
    wait_for 30 pg_isready -q -h 127.0.0.1 -p "$port" ||
        die "PostgreSQL $version/$cluster accepts no connection on 127.0.0.1:$port"

    # The password: the settings file's, else a new one. The file is written first, so that it
    # and the role agree again at the next run whatever fails in between.
    local password owner
    password="$($sudo sed -n 's/^PGPASSWORD=//p' "$services_env" 2>/dev/null || true)"
    [ -n "$password" ] || password="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
    write_file "$services_env" 600 "# by .ci/install.sh for tests/services.py: the tests' PostgreSQL role
PGHOST=127.0.0.1
PGPORT=$port
PGUSER=$pg_role
PGPASSWORD=$password"
    owner="${SUDO_USER:-$(id -un)}" # the user who runs the tests may read it
    [ "$($sudo stat -c %U "$services_env")" = "$owner" ] || $sudo chown "$owner" "$services_env"

    # A superuser: `aiida-trainspot setup --use-postgres` (tested) creates a database owned by a
    # new role, which PostgreSQL 15 allows others only if they are members of that role.
    local psql=(as_postgres psql -XAtq -p "$port" -d postgres)
    local role_ok="SELECT rolsuper AND rolcanlogin FROM pg_roles WHERE rolname = '$pg_role'"
    if [ "$("${psql[@]}" -c "$role_ok")" = t ] && pg_login "$port" "$password"; then
        log "PostgreSQL: role $pg_role logs in on 127.0.0.1:$port ($services_env)"
        return
    fi
    log "PostgreSQL: creating or updating role $pg_role (password in $services_env)"
    # psql reads the password from stdin: it never appears on a command line
    "${psql[@]}" -v ON_ERROR_STOP=1 >/dev/null <<SQL
\\set password '$password'
SET password_encryption = 'scram-sha-256';
SELECT 'CREATE ROLE $pg_role' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$pg_role') \\gexec
ALTER ROLE $pg_role WITH LOGIN SUPERUSER PASSWORD :'password';
SQL
    pg_login "$port" "$password" && return

    # No password login over loopback (Debian's pg_hba.conf allows one): put Debian's two lines
    # first in pg_hba.conf. Passwords, never `trust`.
    local hba marker='# aiida-trainspot (.ci/install.sh): password logins over loopback'
    hba="$("${psql[@]}" -c 'SHOW hba_file')"
    if ! $sudo grep -qxF "$marker" "$hba"; then
        log "PostgreSQL: $hba refuses password logins on 127.0.0.1: adding them first"
        write_file "$hba" 640 "$marker
host    all    all    127.0.0.1/32    scram-sha-256
host    all    all    ::1/128         scram-sha-256
$($sudo cat "$hba")"
        "${psql[@]}" -c 'SELECT pg_reload_conf()' >/dev/null
    fi
    wait_for 10 pg_login "$port" "$password" ||
        die "PostgreSQL: $pg_role cannot log in on 127.0.0.1:$port (see $hba, listen_addresses)"
}

# ------------------------------------------------------------------------------------------------
# RabbitMQ: loopback only. Our settings replace the ones they conflict with; other lines (e.g. a
# consumer_timeout) stay. A running server is restarted only when the settings change or it
# listens beyond loopback.

rabbitmq_env_file=/etc/rabbitmq/rabbitmq-env.conf
rabbitmq_conf_file=/etc/rabbitmq/rabbitmq.conf
rabbitmq_marker='# aiida-trainspot (.ci/install.sh): RabbitMQ on loopback only'
rabbitmq_env_lines=(
    'NODENAME=rabbit@localhost' # the CLI finds the node through epmd, which listens on loopback
    'ERL_EPMD_ADDRESS=127.0.0.1'
    'export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"' # Erlang distribution
)
rabbitmq_env_replaces='^[[:space:]]*(export[[:space:]]+)?(RABBITMQ_)?(NODENAME|NODE_IP_ADDRESS|ERL_EPMD_ADDRESS|ERL_FLAGS)='
rabbitmq_conf_lines=('listeners.tcp.local = 127.0.0.1:5672') # AMQP; no other listener
rabbitmq_conf_replaces='^[[:space:]]*listeners\.tcp\.'
epmd_dropin=/etc/systemd/system/epmd.socket.d/trainspot-loopback.conf

with_settings() { # FILE REGEX LINE...: FILE but the lines matching REGEX, then the marker, LINEs
    local file="$1" replaces="$2"
    shift 2
    { $sudo cat "$file" 2>/dev/null || true; } | grep -Ev "$replaces" | grep -vxF "$rabbitmq_marker" || true
    printf '%s\n' "$rabbitmq_marker" "$@"
}

settings() { grep -Ev '^[[:space:]]*(#|$)' | sort; } # what a file sets, comments and order aside
same_settings() { # FILE CONTENT: does FILE set what CONTENT sets?
    [ "$({ $sudo cat "$1" 2>/dev/null || true; } | settings)" = "$(settings <<<"$2")" ]
}

epmd_on_loopback() { [ -z "$(exposed 4369)" ]; }
rabbitmq_down() { [ -z "$(listeners 5672)" ]; }
rabbitmq_up() { [ -n "$(listeners 5672)" ] && [ -z "$(exposed 5672 25672 4369)" ]; }

setup_rabbitmq() {
    local env_want conf_want changed=()
    env_want="$(with_settings "$rabbitmq_env_file" "$rabbitmq_env_replaces" "${rabbitmq_env_lines[@]}")"
    conf_want="$(with_settings "$rabbitmq_conf_file" "$rabbitmq_conf_replaces" "${rabbitmq_conf_lines[@]}")"
    same_settings "$rabbitmq_env_file" "$env_want" || changed+=("$rabbitmq_env_file")
    same_settings "$rabbitmq_conf_file" "$conf_want" || changed+=("$rabbitmq_conf_file")
    local dropin_want=$'[Socket]\nListenStream=\nListenStream=127.0.0.1:4369'
    if with_systemd && [ "$($sudo cat "$epmd_dropin" 2>/dev/null)" != "$dropin_want" ]; then
        changed+=("$epmd_dropin")
    fi

    if [ ${#changed[@]} -gt 0 ] || [ -n "$(exposed 5672 25672 4369)" ]; then
        # Stop first: the running node is reached with the settings it was started with.
        if ! rabbitmq_down; then
            log "RabbitMQ: stopping it to apply loopback-only settings"
            if with_systemd; then
                $sudo systemctl stop rabbitmq-server
            else
                $sudo rabbitmqctl -q stop || die "RabbitMQ: rabbitmqctl stop failed: stop it by hand"
            fi
            wait_for 60 rabbitmq_down || die "RabbitMQ: still listening 60 s after stopping it"
        fi
        if [ ${#changed[@]} -gt 0 ]; then
            write_file "$rabbitmq_env_file" 644 "$env_want"
            write_file "$rabbitmq_conf_file" 644 "$conf_want"
        fi
        if with_systemd; then # epmd is socket-activated, on every interface by default
            write_file "$epmd_dropin" 644 "$dropin_want"
            $sudo systemctl daemon-reload
            $sudo systemctl stop epmd.service epmd.socket 2>/dev/null || true
            $sudo systemctl start epmd.socket
        elif [ -n "$(exposed 4369)" ]; then # an epmd started with other settings
            $sudo epmd -kill >/dev/null || true
            wait_for 10 epmd_on_loopback || true
        fi
    fi
    if rabbitmq_down; then
        log "RabbitMQ: starting it"
        if with_systemd; then
            $sudo systemctl start rabbitmq-server
        else
            $sudo rabbitmq-server -detached
        fi
    fi
    wait_for 90 rabbitmq_up || die "RabbitMQ: not listening on 127.0.0.1:5672 only after 90 s" \
        "(listening: $(listeners 5672 25672 4369 | tr '\n' ' ')- hex as in /proc/net/tcp)"
    log "RabbitMQ: on loopback only (AMQP 127.0.0.1:5672)"
}

main() {
    cd "$root"
    install_debian_packages
    install_python_packages
    setup_postgres
    setup_rabbitmq
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    main "$@"
fi
