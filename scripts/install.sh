#!/usr/bin/env bash
# Installs edgebell as a system service: a virtualenv in /opt/edgebell, the edgebell user
# (in group dialout for the serial receiver), /etc/edgebell/config.yaml from
# config/example.yaml if there is none, the USB serial drivers loaded at boot
# (/etc/modules-load.d/edgebell.conf), and the systemd unit, enabled when systemd runs.
# Running it again changes nothing that is already right; after `git pull` it upgrades.
#
#   scripts/install.sh                 install (as root)
#   scripts/install.sh --uninstall     remove the program and the unit; keep config, keys, state
#   scripts/install.sh --uninstall --purge   also remove /etc/edgebell, /var/lib/edgebell, the user
#   scripts/install.sh --root DIR      stage everything under DIR instead (no user, no systemctl)
#
# Options:
#   --python PY        interpreter for the virtualenv (default: python3; 3.11 or newer)
#   --deps-from PY     take the dependencies from PY's environment instead of downloading
#                      them: a .pth file in the new venv points at PY's site-packages and
#                      edgebell itself is installed with --no-deps, without build isolation.
#                      For tests and offline staging (the project's own .venv/bin/python);
#                      the venv then depends on that environment staying where it is.
#   --root DIR         stage into DIR: DIR/opt/edgebell, DIR/etc/edgebell/config.yaml,
#                      DIR/etc/systemd/system/edgebell.service (enabled with systemctl --root),
#                      DIR/etc/sysusers.d/edgebell.conf records the user to create.
#                      A virtualenv cannot move: the staged one runs from DIR only.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
root=""
python=python3
deps_from=""
uninstall=false
purge=false

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit "${1:-2}"; }
say() { echo "install: $*" >&2; }
die() { say "$*"; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --root) root=${2:?--root needs a directory}; shift 2 ;;
        --root=*) root=${1#*=}; shift ;;
        --python) python=${2:?--python needs an interpreter}; shift 2 ;;
        --python=*) python=${1#*=}; shift ;;
        --deps-from) deps_from=${2:?--deps-from needs an interpreter}; shift 2 ;;
        --deps-from=*) deps_from=${1#*=}; shift ;;
        --uninstall) uninstall=true; shift ;;
        --purge) purge=true; shift ;;
        -h|--help) usage 0 ;;
        *) say "unknown option $1"; usage ;;
    esac
done
if [ -n "$root" ]; then
    mkdir -p "$root"
    root=$(cd "$root" && pwd)
elif [ "$(id -u)" != 0 ]; then
    die "run as root (or stage into a directory with --root DIR)"
fi
$purge && ! $uninstall && die "--purge goes with --uninstall"

prefix=/opt/edgebell                      # paths as the installed system sees them
unit=/etc/systemd/system/edgebell.service
sysusers=/etc/sysusers.d/edgebell.conf
modules=/etc/modules-load.d/edgebell.conf
link=/usr/local/bin/edgebell
confdir=/etc/edgebell
statedir=/var/lib/edgebell
user=edgebell

systemd_runs() { [ -z "$root" ] && [ -d /run/systemd/system ]; }
# Enable and disable through the running systemd, else offline on the files (a staging root,
# a chroot building an image, a container): the unit then starts at the next boot.
systemctl_here() {
    if systemd_runs; then
        systemctl --quiet "$@"
    elif command -v systemctl >/dev/null; then
        systemctl --root="${root:-/}" --quiet "$@"
    else
        return 1
    fi
}

# Write $2 to $1 with mode $3 unless it already holds exactly that; say whether it changed.
put() {
    local dest=$root$1 content=$2 mode=$3
    if [ -f "$dest" ] && [ "$(cat "$dest")" = "$content" ]; then
        [ "$(stat -c %a "$dest")" = "${mode#0}" ] || chmod "$mode" "$dest"
        return 1
    fi
    mkdir -p "$(dirname "$dest")"
    printf '%s\n' "$content" > "$dest.new"
    chmod "$mode" "$dest.new"
    mv -f "$dest.new" "$dest"
    say "wrote $1"
}

if $uninstall; then
    systemctl_here disable --now edgebell.service 2>/dev/null || true
    rm -f "$root$unit" "$root$sysusers" "$root$modules"
    if [ -L "$root$link" ] && [ "$(readlink "$root$link")" = "$prefix/bin/edgebell" ]; then
        rm -f "$root$link"
    fi
    rm -rf "$root$prefix"
    systemd_runs && systemctl daemon-reload
    say "removed $prefix, $unit and $link"
    if $purge; then
        rm -rf "$root$confdir" "$root$statedir"
        rm -f "$root"/etc/credstore/edgebell.*
        if [ -z "$root" ] && getent passwd "$user" >/dev/null; then
            userdel "$user" || say "could not remove user $user"
        fi
        say "purged $confdir, $statedir, /etc/credstore/edgebell.* and user $user"
    else
        say "kept $confdir, the keys in /etc/credstore, $statedir (the outbox) and user $user;"
        say "remove them with --uninstall --purge"
    fi
    exit 0
fi

# -- the program: a virtualenv in /opt/edgebell ------------------------------------------------

"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
    || die "Python 3.11 or newer is needed ($python is $("$python" --version 2>&1 || echo missing))"
venv=$root$prefix
# What is installed is named by a hash of the sources and the way they were installed.
source_id=$(
    cd "$repo"
    { echo "deps-from=${deps_from:+$("$deps_from" -c 'import sys; print(sys.prefix)')}"
      find pyproject.toml docs/operations.md edgebell -type f \
          \( -name '*.py' -o -name pyproject.toml -o -name operations.md \) \
          -not -path '*/__pycache__/*' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
    } | sha256sum | cut -d' ' -f1
)
stamp=$venv/.edgebell-source
if [ -x "$venv/bin/edgebell" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$source_id" ] \
    && "$venv/bin/edgebell" --version >/dev/null 2>&1; then
    say "edgebell in $prefix is up to date ($("$venv/bin/edgebell" --version))"
    program_changed=false
else
    if [ ! -x "$venv/bin/python" ]; then
        say "creating the virtualenv $prefix"
        "$python" -m venv "$venv"
    fi
    pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
    if [ -n "$deps_from" ]; then
        site=$("$deps_from" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
        own=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
        printf '%s\n' "$site" > "$own/_edgebell_deps.pth"
        pip+=(--no-deps)
        # Building edgebell needs setuptools that can make wheels: without it in reach,
        # pip fetches one from PyPI (build isolation); with it (wheel installed, or
        # setuptools >= 70.1), the whole install runs offline.
        if "$venv/bin/python" -c 'import wheel' 2>/dev/null \
            || "$venv/bin/python" -c 'import setuptools.command.bdist_wheel' 2>/dev/null; then
            pip+=(--no-build-isolation --no-index)
        fi
    fi
    say "installing edgebell from $repo into $prefix"
    # A private copy: building in the checkout would leave build/ and egg-info behind.
    build=$(mktemp -d)
    trap 'rm -rf "$build"' EXIT
    tar -C "$repo" -cf - pyproject.toml README.md edgebell | tar -C "$build" -xf -
    "${pip[@]}" --upgrade "$build"
    # The unit's Documentation= points here.
    install -D -m 0644 "$repo/docs/operations.md" "$venv/share/doc/edgebell/operations.md"
    echo "$source_id" > "$stamp"
    program_changed=true
fi
mkdir -p "$(dirname "$root$link")"
if [ "$(readlink "$root$link" 2>/dev/null)" != "$prefix/bin/edgebell" ]; then
    ln -sfn "$prefix/bin/edgebell" "$root$link"
    say "linked $link -> $prefix/bin/edgebell"
fi

# -- the user ----------------------------------------------------------------------------------

put "$sysusers" "# The user of the edgebell service; in dialout to open the serial receiver.
u $user - \"edgebell doorbell gateway\" $statedir
m $user dialout" 0644 || true
if [ -n "$root" ]; then
    say "user $user not created in a staging root: systemd-sysusers creates it from $sysusers"
elif ! getent passwd "$user" >/dev/null; then
    if command -v systemd-sysusers >/dev/null; then
        systemd-sysusers "$sysusers"
    else
        useradd --system --user-group --home-dir "$statedir" --no-create-home \
            --shell /usr/sbin/nologin --comment "edgebell doorbell gateway" "$user"
        usermod -aG dialout "$user"
    fi
    say "created system user $user (groups: $(id -nG "$user"))"
fi

# -- configuration and the unit ---------------------------------------------------------------

config=$root$confdir/config.yaml
install -d -m 0755 "$root$confdir"
install -d -m 0700 "$root/etc/credstore"
if [ ! -e "$config" ]; then
    install -m 0640 "$repo/config/example.yaml" "$config"
    say "wrote $confdir/config.yaml from config/example.yaml: edit it before starting"
fi
if [ -z "$root" ] && [ "$(stat -c %G "$config")" != "$user" ]; then
    # The service and support staff in group edgebell read it; others do not.
    chgrp "$user" "$config"
    chmod 0640 "$config"
fi

# DeviceAllow=char-ttyUSB / char-ttyACM are looked up in /proc/devices when the unit starts:
# a USB serial driver loaded later leaves the receiver refused (EPERM) until a restart.
# Loading the drivers at boot, before the service, keeps a receiver plugged in later reachable.
put "$modules" "# Loaded at boot for edgebell.service (see docs/operations.md): its DeviceAllow=char-ttyUSB
# and char-ttyACM resolve only if these USB serial drivers are loaded before it starts.
usbserial
cdc_acm" 0644 || true
if [ -z "$root" ]; then
    for module in usbserial cdc_acm; do
        grep -q "^$module " /proc/modules 2>/dev/null || modprobe -q "$module" 2>/dev/null \
            || say "could not load the $module driver now (it is loaded at the next boot)"
    done
fi

unit_changed=false
put "$unit" "$(cat "$repo/systemd/edgebell.service")" 0644 && unit_changed=true
if ! systemctl_here is-enabled edgebell.service >/dev/null 2>&1; then
    systemctl_here enable edgebell.service && say "enabled edgebell.service"
fi

if systemd_runs; then
    $unit_changed && systemctl daemon-reload
    if "$prefix/bin/edgebell" check-config --config "$confdir/config.yaml" >/dev/null 2>&1; then
        if systemctl --quiet is-active edgebell.service; then
            if $program_changed || $unit_changed; then
                systemctl restart edgebell.service && say "restarted edgebell.service"
            fi
        else
            systemctl start edgebell.service && say "started edgebell.service"
        fi
    else
        say "not started: $confdir/config.yaml does not check out yet. Next steps:"
        say "  put the keys in /etc/credstore (see docs/operations.md), edit the config, then"
        say "  edgebell check-config && systemctl start edgebell"
    fi
elif [ -z "$root" ]; then
    say "systemd is not running here: start the daemon with $prefix/bin/edgebell run"
fi
say "done"
