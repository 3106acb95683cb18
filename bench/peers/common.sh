# shellcheck shell=bash
# Helpers shared by bench/peers/prosody.sh and bench/peers/ejabberd.sh.
# Sourced, not run. Everything here talks to 127.0.0.1 only.

PEERS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
REPO_ROOT="$(cd "$PEERS_DIR/../.." && pwd -P)"

# File descriptors wanted for the server process (10,000 sessions plus
# storage files, with room to spare).
WANT_NOFILE="${BENCH_NOFILE:-65536}"

say() { printf '%s: %s\n' "$PEER" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PEER" "$*" >&2; exit 1; }

need_root() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (it installs packages and drops to the '$1' user)"
}

# shellcheck disable=SC2034  # PORT, DIR, KEEP_DATA are read by the peer scripts
# parse_args "$@": sets PORT (when --port is given), DIR (absolute) and
# KEEP_DATA. DIR defaults to $REPO_ROOT/target/bench/$PEER.
parse_args() {
    PORT=""
    DIR=""
    KEEP_DATA=0
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --port) [[ $# -ge 2 ]] || die "--port needs a value"; PORT="$2"; shift 2 ;;
            --port=*) PORT="${1#--port=}"; shift ;;
            --dir) [[ $# -ge 2 ]] || die "--dir needs a value"; DIR="$2"; shift 2 ;;
            --dir=*) DIR="${1#--dir=}"; shift ;;
            --keep-data) KEEP_DATA=1; shift ;;
            *) die "unknown argument: $1" ;;
        esac
    done
    if [[ -n $PORT ]]; then
        if ! [[ $PORT =~ ^[0-9]+$ ]] || ((PORT < 1 || PORT > 65535)); then
            die "bad port: $PORT"
        fi
    fi
    [[ -n $DIR ]] || DIR="$REPO_ROOT/target/bench/$PEER"
    DIR="$(realpath -m -- "$DIR")"
}

# Log level for the peer's own log: PEER_LOG_LEVEL=debug|info|warn|error.
# The default is warn so that per-connection info lines (one or more per
# login on both servers) do not turn into a logging benchmark.
peer_log_level() {
    local l="${PEER_LOG_LEVEL:-warn}"
    case "$l" in
        debug|info|warn|error) printf '%s' "$l" ;;
        warning) printf 'warn' ;;
        *) die "PEER_LOG_LEVEL must be debug, info, warn or error (got $l)" ;;
    esac
}

# Raise the open-files limit of this shell (inherited by the server).
# Tries WANT_NOFILE; where the hard limit is lower and cannot be raised
# (a container without CAP_SYS_RESOURCE), takes the hard limit and says so.
raise_nofile() {
    if ulimit -Hn "$WANT_NOFILE" 2>/dev/null || [[ $(ulimit -Hn) == unlimited ]] \
        || (($(ulimit -Hn) >= WANT_NOFILE)); then
        ulimit -Sn "$WANT_NOFILE"
    else
        local hard
        hard="$(ulimit -Hn)"
        ulimit -Sn "$hard"
        say "WARNING: open-files hard limit is $hard and cannot be raised to $WANT_NOFILE here" \
            "(no CAP_SYS_RESOURCE); running with ulimit -n $hard"
        ((hard >= 10240)) || die "ulimit -n $hard is too low for 10,000 sessions"
    fi
    # shellcheck disable=SC2034  # read by the peer scripts
    NOFILE="$(ulimit -n)"
}

# True when something accepts TCP connections on 127.0.0.1:$1.
port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# True when 127.0.0.1:$1 answers a client stream header for 'localhost'
# with <stream:features>.
xmpp_features() {
    local port="$1"
    (
        exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
        printf "%s" "<?xml version='1.0'?><stream:stream to='localhost' version='1.0' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>" >&3
        buf=""
        while IFS= read -r -t 5 -d '>' chunk <&3; do
            buf+="$chunk>"
            if [[ $buf == *"</stream:features>"* || $buf == *"<stream:features/>"* ]]; then
                printf '</stream:stream>' >&3 2>/dev/null || true
                exit 0
            fi
            ((${#buf} < 65536)) || break
        done
        exit 1
    ) 2>/dev/null
}

# pid_alive PID: the process exists and is not a zombie.
pid_alive() {
    local pid="$1" state
    [[ -n $pid && -d /proc/$pid ]] || return 1
    state="$(awk '/^State:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)"
    [[ -n $state && $state != Z ]]
}

# read_pid FILE: prints the pid in FILE if the file exists and the process
# is alive.
read_pid() {
    local f="$1" pid
    [[ -s $f ]] || return 1
    pid="$(tr -dc '0-9' <"$f")"
    pid_alive "$pid" || return 1
    printf '%s' "$pid"
}

# wait_ready PORT PID TIMEOUT LOGFILE...: waits until the XMPP port answers
# with stream features; fails with the log tails if the process dies or
# the time runs out.
wait_ready() {
    local port="$1" pid="$2" timeout="$3"
    shift 3
    local start=$SECONDS
    while ((SECONDS - start < timeout)); do
        if ! pid_alive "$pid"; then
            show_logs "$@"
            die "process $pid exited before 127.0.0.1:$port was ready"
        fi
        if xmpp_features "$port"; then
            return 0
        fi
        sleep 0.2
    done
    show_logs "$@"
    die "127.0.0.1:$port did not offer stream features within ${timeout}s (pid $pid still running; stop it with: $0 stop --dir $DIR)"
}

show_logs() {
    local f
    for f in "$@"; do
        [[ -s $f ]] || continue
        printf -- '----- last lines of %s -----\n' "$f" >&2
        tail -n 40 "$f" >&2
    done
    printf -- '-----\n' >&2
}

# wait_exit PID TIMEOUT: waits for PID to exit; true if it did.
wait_exit() {
    local pid="$1" timeout="$2" i
    for ((i = 0; i < timeout * 10; i++)); do
        pid_alive "$pid" || return 0
        sleep 0.1
    done
    ! pid_alive "$pid"
}

# stop_pid PID GRACE: SIGTERM, then SIGKILL after GRACE seconds.
stop_pid() {
    local pid="$1" grace="$2"
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_exit "$pid" "$grace"; then
        say "pid $pid still running after ${grace}s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        wait_exit "$pid" 10 || die "pid $pid does not exit"
    fi
}

# apt_install PKG...: installs the packages that are missing.
apt_install() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    ((${#missing[@]} > 0)) || return 0
    export DEBIAN_FRONTEND=noninteractive
    # The package lists are fetched when there are none or they are a day old.
    if [[ -z $(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages' -mmin -1440 -print -quit 2>/dev/null) ]]; then
        apt-get update -q
    fi
    if ! apt-get install -y -q "${missing[@]}"; then
        apt-get update -q
        apt-get install -y -q "${missing[@]}"
    fi
}

# disable_system_service NAME: stops the Debian package's own instance and
# keeps it from starting at boot, with whatever init system is present.
disable_system_service() {
    local svc="$1"
    if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
        systemctl stop "$svc" 2>/dev/null || true
        systemctl disable "$svc" 2>/dev/null || true
        systemctl mask "$svc" 2>/dev/null || true
    else
        if command -v systemctl >/dev/null; then
            # Works on unit files without a running systemd.
            systemctl disable "$svc" >/dev/null 2>&1 || true
        fi
        # Only when it runs: ejabberd's init script, for one, starts an
        # Erlang control node (and epmd on all interfaces) just to say
        # "not running".
        if [[ -x /etc/init.d/$svc ]] && read_pid "/run/$svc/$svc.pid" >/dev/null; then
            "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
        fi
        if command -v update-rc.d >/dev/null; then
            update-rc.d "$svc" disable >/dev/null 2>&1 || true
        fi
    fi
}
