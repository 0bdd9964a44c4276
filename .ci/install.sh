#!/usr/bin/env bash
# Install everything aiida-trainspot needs on a bare Debian 12 machine, as root:
# Debian packages (Quantum ESPRESSO, its pseudopotentials, LAMMPS, OpenMPI),
# a virtual environment in .venv, torch 2.13.0 (CPU) first, then the package
# with the exact versions of .ci/constraints.txt.
#
# Idempotent: a second run checks what is there and returns in seconds.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${TRAINSPOT_VENV:-$root/.venv}"
python="${PYTHON:-python3}"

# postgresql and rabbitmq-server: the production services the `services` tests exercise;
# graphviz: `verdi node graph generate` (provenance graphs, tested and shown in the docs)
debian_packages=(quantum-espresso quantum-espresso-data lammps openmpi-bin postgresql rabbitmq-server slurm-wlm munge openssh-server graphviz)

log() { printf '[install] %s\n' "$*"; }

install_debian_packages() {
    local missing=()
    for pkg in "${debian_packages[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        log "Debian packages present: ${debian_packages[*]}"
        return
    fi
    if ! command -v apt-get >/dev/null; then
        log "missing ${missing[*]} and no apt-get: install them by hand" >&2
        exit 1
    fi
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
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

install_debian_packages
install_python_packages
