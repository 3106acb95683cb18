#!/usr/bin/env bash
# Prosody as a benchmark peer for Starling, on 127.0.0.1 only.
#
#   bench/peers/prosody.sh install
#   bench/peers/prosody.sh start --port P [--dir D] [--keep-data]
#   bench/peers/prosody.sh stop [--dir D]
#   bench/peers/prosody.sh version
#   bench/peers/prosody.sh pids [--dir D]     # the server's pid (for RSS)
#
# D defaults to target/bench/prosody under the repository root. Config, data,
# logs and pid file all live in D; /etc/prosody and /var/lib/prosody are not
# used. start wipes D/data unless --keep-data is given. The server runs as
# the 'prosody' user (Prosody refuses root), with ulimit -n raised first.
# PEER_LOG_LEVEL=debug|info|warn|error sets the log level (default warn).
# See bench/peers/README.md for what the config changes and why.
set -euo pipefail

PEER=prosody
# shellcheck source=bench/peers/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

RUN_USER=prosody
START_TIMEOUT=60

usage() {
    sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

cmd_install() {
    need_root "$RUN_USER"
    apt_install prosody
    disable_system_service prosody
    # A system instance started some other way still holds its pid file.
    local pid
    if pid="$(read_pid /run/prosody/prosody.pid)"; then
        say "stopping the system prosody (pid $pid)"
        stop_pid "$pid" 30
    fi
    say "installed: $(cmd_version)"
}

cmd_version() {
    command -v prosody >/dev/null || die "prosody is not installed (run: $0 install)"
    local v deb
    v="$(cat /usr/lib/prosody/prosody.version 2>/dev/null || echo unknown)"
    deb="$(dpkg-query -W -f='${Version}' prosody 2>/dev/null || echo '?')"
    printf 'prosody %s (Debian package %s, %s)\n' "$v" "$deb" "$(lua5.4 -v 2>&1 | awk '{print $1" "$2}')"
}

write_config() {
    local level
    level="$(peer_log_level)"
    cat >"$DIR/prosody.cfg.lua" <<EOF
-- Written by bench/peers/prosody.sh; rewritten on every start.
-- Prosody $(cat /usr/lib/prosody/prosody.version 2>/dev/null || echo '?') as a benchmark peer on 127.0.0.1:$PORT.

admins = { }
plugin_paths = { }
data_path = "$DIR/data"
pidfile = "$DIR/run/prosody.pid"
certificates = "$DIR/certs"
log = {
	{ levels = { min = "$level" }, to = "file", filename = "$DIR/logs/prosody.log" };
}

-- Loopback only, on the caller's port. No s2s, no HTTP, no legacy TLS port,
-- no component port.
interfaces = { "127.0.0.1" }
local_interfaces = { "127.0.0.1" }
c2s_interfaces = { "127.0.0.1" }
c2s_ports = { $PORT }
legacy_ssl_ports = { }
s2s_ports = { }
component_ports = { }
http_ports = { }
https_ports = { }

-- The Debian default list minus TLS, s2s dialback, mod_limits (the
-- 10kb/s c2s rate limit), carbons, PEP/vCard/bookmarks, invites, admin
-- modules. c2s, presence, message, iq, offline are always loaded.
modules_enabled = {
	"roster";
	"saslauth";
	"disco";
	"ping";
	"register";
	"smacks";     -- XEP-0198 offered (Starling offers it too)
	"posix";
}
modules_disabled = {
	"s2s";           -- autoloaded otherwise
	"s2s_auth_certs";
}

-- Plaintext c2s with SASL PLAIN allowed (the load generator does not do TLS).
c2s_require_encryption = false
allow_unencrypted_plain_auth = true

-- Open in-band registration (XEP-0077). mod_register_limits throttles only
-- when min_seconds_between_registrations or registration_throttle_max is
-- set (neither is), and 127.0.0.1/::1 are on its default allowlist anyway.
allow_registration = true
registration_allowlist = { "127.0.0.1", "::1" }

-- Same PBKDF2 work as Starling (DEFAULT_ITERATIONS = 4096); Prosody's
-- default is 10000.
authentication = "internal_hashed"
default_iteration_count = 4096

-- Same listen backlog as Starling (128, also Prosody's default).
network_settings = {
	tcp_backlog = 128;
}

storage = "internal"

VirtualHost "localhost"

-- XEP-0045 group chat for the muc scenario (bench/muc), with Prosody's
-- defaults written out: anyone may create rooms (restrict_room_creation
-- unset), a new room is locked until its owner configures it
-- (muc_room_locking), 20 messages of history per room
-- (muc_room_default_history_length), no cap on occupants and no rate
-- limit (0.12's mod_muc has neither; mod_muc_limits is a community
-- module, not loaded), XEP-0421 occupant ids on (as Starling's).
Component "conference.localhost" "muc"
	restrict_room_creation = false
	muc_room_locking = true
	muc_room_default_history_length = 20
	muc_occupant_id = true
EOF
}

cmd_start() {
    need_root "$RUN_USER"
    [[ -n $PORT ]] || die "start needs --port P"
    command -v prosody >/dev/null || die "prosody is not installed (run: $0 install)"
    id "$RUN_USER" >/dev/null 2>&1 || die "no '$RUN_USER' user (run: $0 install)"

    local pid
    if pid="$(read_pid "$DIR/run/prosody.pid")"; then
        die "already running with $DIR (pid $pid): run '$0 stop --dir $DIR' first"
    fi
    if port_open "$PORT"; then
        die "127.0.0.1:$PORT is already in use by another process"
    fi

    mkdir -p "$DIR/logs" "$DIR/run" "$DIR/certs"
    if ((KEEP_DATA == 0)); then
        rm -rf "$DIR/data"
    fi
    mkdir -p "$DIR/data"
    # Keep the previous run's logs one generation back.
    local f
    for f in prosody.log console.log; do
        [[ -e $DIR/logs/$f ]] && mv -f "$DIR/logs/$f" "$DIR/logs/$f.prev"
    done
    rm -f "$DIR/run/prosody.pid"
    write_config
    chmod 0755 "$DIR"
    chmod 0644 "$DIR/prosody.cfg.lua"
    chown -R "$RUN_USER:$RUN_USER" "$DIR/data" "$DIR/logs" "$DIR/run" "$DIR/certs"

    raise_nofile
    # -F: stay in the foreground of this background job; setsid keeps it
    # out of the caller's process group; setpriv drops to the prosody user
    # and keeps the raised rlimits. setsid and setpriv exec, so $! is
    # Prosody's own pid.
    setsid setpriv --reuid="$RUN_USER" --regid="$RUN_USER" --init-groups -- \
        env HOME="$DIR/data" prosody --config "$DIR/prosody.cfg.lua" -F \
        </dev/null >"$DIR/logs/console.log" 2>&1 &
    pid=$!
    echo "$pid" >"$DIR/run/launcher.pid"

    wait_ready "$PORT" "$pid" "$START_TIMEOUT" "$DIR/logs/console.log" "$DIR/logs/prosody.log"
    echo "$PORT" >"$DIR/run/port"
    echo "prosody ready on 127.0.0.1:$PORT (pid $pid)"
    say "dir $DIR, ulimit -n $NOFILE, log level $(peer_log_level)"
}

cmd_stop() {
    need_root "$RUN_USER"
    local pid=""
    pid="$(read_pid "$DIR/run/prosody.pid")" || pid="$(read_pid "$DIR/run/launcher.pid")" || pid=""
    if [[ -z $pid ]]; then
        say "not running (dir $DIR)"
        rm -f "$DIR/run/prosody.pid" "$DIR/run/launcher.pid"
        return 0
    fi
    # Make sure it is our Prosody before signalling it.
    if ! tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "--config $DIR/prosody.cfg.lua"; then
        die "pid $pid from $DIR/run is not the prosody started with $DIR; not stopping it"
    fi
    stop_pid "$pid" 30
    rm -f "$DIR/run/prosody.pid" "$DIR/run/launcher.pid"
    echo "prosody stopped (pid $pid)"
}

cmd_pids() {
    read_pid "$DIR/run/prosody.pid" || die "not running (dir $DIR)"
    echo
}

main() {
    [[ $# -ge 1 ]] || usage
    local cmd="$1"
    shift
    case "$cmd" in
        install) [[ $# -eq 0 ]] || die "install takes no arguments"; cmd_install ;;
        start) parse_args "$@"; cmd_start ;;
        stop) parse_args "$@"; cmd_stop ;;
        version) [[ $# -eq 0 ]] || die "version takes no arguments"; cmd_version ;;
        pids) parse_args "$@"; cmd_pids ;;
        -h|--help|help) usage ;;
        *) die "unknown command: $cmd (install|start|stop|version|pids)" ;;
    esac
}

main "$@"
