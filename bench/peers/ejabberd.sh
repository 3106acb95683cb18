#!/usr/bin/env bash
# ejabberd as a benchmark peer for Starling, on 127.0.0.1 only.
#
#   bench/peers/ejabberd.sh install
#   bench/peers/ejabberd.sh start --port P [--dir D] [--keep-data]
#   bench/peers/ejabberd.sh stop [--dir D]
#   bench/peers/ejabberd.sh version
#   bench/peers/ejabberd.sh pids [--dir D]    # beam.smp, and epmd if this instance started it
#
# D defaults to target/bench/ejabberd under the repository root. Config,
# Mnesia spool, logs, pid file and Erlang cookie all live in D; /etc/ejabberd
# and /var/lib/ejabberd are not used. start wipes the spool unless
# --keep-data is given. The node is ejabberd-bench-P@localhost; epmd and the
# Erlang distribution listen on 127.0.0.1 only. The server runs as the
# 'ejabberd' user, with ulimit -n raised first.
# PEER_LOG_LEVEL=debug|info|warn|error sets the log level (default warn).
# See bench/peers/README.md for what the config changes and why.
set -euo pipefail

PEER=ejabberd
# shellcheck source=bench/peers/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

RUN_USER=ejabberd
START_TIMEOUT=120

usage() {
    sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

cmd_install() {
    need_root "$RUN_USER"
    apt_install ejabberd
    disable_system_service ejabberd
    # The system node (ejabberd@localhost, from the package's service)
    # would hold 5222, 5269, 5280, 5443... Stop it if it runs.
    local pid
    if pid="$(read_pid /run/ejabberd/ejabberd.pid)" \
        || pid="$(pgrep -u "$RUN_USER" -f -- '-s?name ejabberd@' | head -n 1)"; then
        say "stopping the system ejabberd (pid $pid)"
        if [[ -x /etc/init.d/ejabberd ]]; then
            timeout 120 /etc/init.d/ejabberd stop >/dev/null 2>&1 || true
        fi
        if pid_alive "$pid"; then
            stop_pid "$pid" 60
        fi
    fi
    say "installed: $(cmd_version)"
}

ejabberd_version() {
    local app
    for app in /usr/lib/*/ejabberd-*/ebin/ejabberd.app /usr/lib/ejabberd*/ebin/ejabberd.app; do
        if [[ -f $app ]]; then
            sed -n 's/.*{vsn, *"\([^"]*\)"}.*/\1/p' "$app" | head -n 1
            return 0
        fi
    done
    return 1
}

cmd_version() {
    command -v ejabberdctl >/dev/null || die "ejabberd is not installed (run: $0 install)"
    local v deb otp
    v="$(ejabberd_version || true)"
    deb="$(dpkg-query -W -f='${Version}' ejabberd 2>/dev/null || echo '?')"
    otp="$(cat /usr/lib/erlang/releases/*/OTP_VERSION 2>/dev/null | head -n 1 || true)"
    printf 'ejabberd %s (Debian package %s, Erlang/OTP %s)\n' "${v:-unknown}" "$deb" "${otp:-?}"
}

# Sets CTL to the ejabberdctl command line for this instance: run as the
# ejabberd user (ejabberdctl would 'su' to it itself, but with that user's
# HOME and cookie in /var/lib/ejabberd), with this instance's files only.
# HOME is D/home so that the Erlang cookie is D/home/.erlang.cookie.
set_ctl() {
    CTL=(setpriv --reuid="$RUN_USER" --regid="$RUN_USER" --init-groups --
        env HOME="$DIR/home" ejabberdctl
        --config-dir "$DIR"
        --config "$DIR/ejabberd.yml"
        --ctl-config "$DIR/ejabberdctl.cfg"
        --spool "$DIR/spool"
        --logs "$DIR/logs"
        --node "$NODE")
}

write_config() {
    local level
    level="$(peer_log_level)"
    [[ $level == warn ]] && level=warning

    cat >"$DIR/ejabberdctl.cfg" <<EOF
# Written by bench/peers/ejabberd.sh; sourced by ejabberdctl.
ERLANG_NODE=$NODE
POLL=true
# Most ports (sockets and files) open at once in the VM; Debian's default is 32000.
ERL_MAX_PORTS=65536
# Most Erlang processes; each c2s session is one or two. Debian's default.
ERL_PROCESSES=250000
# epmd and the distribution listener on loopback only.
ERL_EPMD_ADDRESS=127.0.0.1
ERL_OPTIONS="-env ERL_CRASH_DUMP_BYTES 0 -kernel inet_dist_use_interface {127,0,0,1}"
EJABBERD_PID_PATH=$DIR/run/ejabberd.pid
EJABBERD_BYPASS_WARNINGS=true
EOF

    cat >"$DIR/inetrc" <<'EOF'
{lookup,["file","native"]}.
{host,{127,0,0,1}, ["localhost"]}.
EOF

    cat >"$DIR/ejabberd.yml" <<EOF
# Written by bench/peers/ejabberd.sh; rewritten on every start.
# ejabberd $(ejabberd_version || echo '?') as a benchmark peer on 127.0.0.1:$PORT.
hosts:
  - localhost
loglevel: $level
log_rotate_count: 1
hide_sensitive_log_data: false

# No certificates, no ACME (nothing is fetched), no TLS.
acme:
  auto: false

# Hashed (SCRAM-SHA-1, 4096 iterations) storage like Prosody and Starling;
# ejabberd's own default is plain.
auth_method: [internal]
auth_password_format: scram
auth_scram_hash: sha
# Offer PLAIN and SCRAM-SHA-1 only, as Prosody does (as Debian's config does).
disable_sasl_mechanisms:
  - "digest-md5"
  - "x-oauth2"

# Default 600 s: one registration per IP every 10 minutes.
registration_timeout: infinity

# Per-process message queue limit (a session process that falls behind is
# killed beyond it). High, so a flood to one user does not cut it off.
max_fsm_queue: 100000

# In-memory caches (auth, roster, offline counts, sessions...) big enough
# for 10,000+ users; the default (1000) thrashes and logs "Shrinking cache".
cache_size: 50000

# No server-to-server traffic (there is no s2s listener either).
s2s_access: none

# Only plaintext c2s on loopback, on the caller's port. Debian's default
# config also opens 5223 (direct TLS), 5269 (s2s), 5280/5443 (HTTP),
# 3478/udp (STUN) and 1883 (MQTT), all on "::": all dropped.
listen:
  -
    port: $PORT
    ip: "127.0.0.1"
    module: ejabberd_c2s
    # Same listen backlog as Starling and Prosody (ejabberd's default is 5).
    backlog: 128
    max_stanza_size: 262144
    shaper: none
    access: c2s
    starttls: false
    starttls_required: false
    max_fsm_queue: 100000

acl:
  local:
    user_regexp: ""

access_rules:
  local:
    allow: local
  c2s:
    allow: all
  register:
    allow: all

# No traffic shaping (Debian's default: c2s_shaper normal = 3000 B/s).
shaper_rules:
  c2s_shaper: none
  s2s_shaper: none
  # Same as Starling's xmpp.max_offline_messages default (Debian's: 100).
  max_user_offline_messages: 1000

modules:
  mod_disco: {}
  mod_offline:
    access_max_user_messages: max_user_offline_messages
    use_mam_for_storage: false
  mod_ping: {}
  mod_register:
    access: register
    ip_access: all
    password_strength: 0
    captcha_protected: false
  mod_roster: {}
  # XEP-0198 offered (Starling and Prosody offer it too).
  mod_stream_mgmt: {}
  # XEP-0045 group chat for the muc scenario (bench/muc), with the
  # defaults that bound a room written out: 200 occupants per room
  # (max_users, also the rooms' default), 20 messages of history, no
  # minimum interval between a user's messages or presences, no shapers.
  mod_muc:
    host: "conference.@HOST@"
    access: all
    access_create: all
    access_persistent: all
    access_admin: none
    max_users: 200
    max_users_presence: 1000
    history_size: 20
    min_message_interval: 0
    min_presence_interval: 0
    room_shaper: none
    user_message_shaper: none
    user_presence_shaper: none
    default_room_options:
      max_users: 200
      mam: false
EOF
}

epmd_running() {
    epmd -names >/dev/null 2>&1
}

cmd_start() {
    need_root "$RUN_USER"
    [[ -n $PORT ]] || die "start needs --port P"
    command -v ejabberdctl >/dev/null || die "ejabberd is not installed (run: $0 install)"
    id "$RUN_USER" >/dev/null 2>&1 || die "no '$RUN_USER' user (run: $0 install)"

    local pid
    if pid="$(read_pid "$DIR/run/ejabberd.pid")" || pid="$(read_pid "$DIR/run/launcher.pid")"; then
        die "already running with $DIR (pid $pid): run '$0 stop --dir $DIR' first"
    fi
    if port_open "$PORT"; then
        die "127.0.0.1:$PORT is already in use by another process"
    fi

    NODE="ejabberd-bench-$PORT@localhost"
    mkdir -p "$DIR/logs" "$DIR/run" "$DIR/home"
    if ((KEEP_DATA == 0)); then
        rm -rf "$DIR/spool"
    fi
    mkdir -p "$DIR/spool"
    local f
    for f in ejabberd.log error.log console.log; do
        [[ -e $DIR/logs/$f ]] && mv -f "$DIR/logs/$f" "$DIR/logs/$f.prev"
    done
    rm -f "$DIR/logs"/erl_crash_*.dump "$DIR/run/ejabberd.pid"
    if [[ ! -s $DIR/home/.erlang.cookie ]]; then
        head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DIR/home/.erlang.cookie"
    fi
    chmod 0400 "$DIR/home/.erlang.cookie"
    write_config
    chmod 0755 "$DIR"
    chmod 0644 "$DIR/ejabberd.yml" "$DIR/ejabberdctl.cfg" "$DIR/inetrc"
    chown -R "$RUN_USER:$RUN_USER" "$DIR/spool" "$DIR/logs" "$DIR/run" "$DIR/home"
    echo "$NODE" >"$DIR/run/node"
    if epmd_running; then
        rm -f "$DIR/run/epmd-ours"
    else
        : >"$DIR/run/epmd-ours"
    fi

    raise_nofile
    # 'foreground' keeps ejabberdctl (and its beam.smp child) attached to
    # this background job, so its output lands in console.log and a crash at
    # boot is seen at once; setsid keeps it out of the caller's process group.
    set_ctl
    setsid "${CTL[@]}" foreground </dev/null >"$DIR/logs/console.log" 2>&1 &
    local launcher=$!
    echo "$launcher" >"$DIR/run/launcher.pid"

    wait_ready "$PORT" "$launcher" "$START_TIMEOUT" \
        "$DIR/logs/console.log" "$DIR/logs/ejabberd.log" "$DIR/logs/error.log"
    pid="$(read_pid "$DIR/run/ejabberd.pid")" || pid="$launcher"
    echo "$PORT" >"$DIR/run/port"
    echo "ejabberd ready on 127.0.0.1:$PORT (pid $pid)"
    say "dir $DIR, node $NODE, ulimit -n $NOFILE, log level $(peer_log_level)"
}

cmd_stop() {
    need_root "$RUN_USER"
    local pid="" launcher=""
    pid="$(read_pid "$DIR/run/ejabberd.pid")" || pid=""
    launcher="$(read_pid "$DIR/run/launcher.pid")" || launcher=""
    if [[ -z $pid && -z $launcher ]]; then
        say "not running (dir $DIR)"
        rm -f "$DIR/run/ejabberd.pid" "$DIR/run/launcher.pid"
        return 0
    fi
    NODE="$(cat "$DIR/run/node" 2>/dev/null || true)"
    [[ -n $NODE ]] || die "no $DIR/run/node: cannot tell which node to stop"
    # Make sure these are our processes before signalling them.
    local p
    for p in $pid $launcher; do
        if ! tr '\0' ' ' <"/proc/$p/cmdline" | grep -q -- "$NODE"; then
            die "pid $p from $DIR/run is not the ejabberd node $NODE; not stopping it"
        fi
    done
    # A clean stop through ejabberdctl first (Mnesia is closed properly),
    # then signals.
    set_ctl
    if ! timeout 60 "${CTL[@]}" stop >/dev/null 2>&1; then
        say "ejabberdctl stop failed; sending SIGTERM"
    fi
    for p in $pid $launcher; do
        if ! wait_exit "$p" 60; then
            stop_pid "$p" 30
        fi
    done
    # epmd outlives the node; end it if this instance started it and no
    # other node is registered with it.
    if [[ -e $DIR/run/epmd-ours ]] && epmd_running && ! epmd -names 2>/dev/null | grep -q '^name '; then
        epmd -kill >/dev/null 2>&1 || true
    fi
    rm -f "$DIR/run/ejabberd.pid" "$DIR/run/launcher.pid" "$DIR/run/epmd-ours"
    echo "ejabberd stopped (pid ${pid:-$launcher})"
}

cmd_pids() {
    local pid epmd
    pid="$(read_pid "$DIR/run/ejabberd.pid")" || die "not running (dir $DIR)"
    echo "$pid"
    if [[ -e $DIR/run/epmd-ours ]]; then
        epmd="$(pgrep -u "$RUN_USER" -x epmd | head -n 1 || true)"
        [[ -z $epmd ]] || echo "$epmd"
    fi
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
