#!/bin/sh
# haproxy load balancer: round-robin over lb.backends (config; in the templates a macro listing the web
# nodes' addresses) on lb.port (default 8080), bound to the node's own address; the backends listen on
# web.port (default 8080). Config and pid live in ~/.loom/services/haproxy.
set -eu
dir="$HOME/.loom/services/haproxy"
conf="$dir/haproxy.cfg"
pidfile="$dir/haproxy.pid"
port=$(loom-config lb.port 8080)
backend_port=$(loom-config web.port 8080)

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

# The health check's HTTP GET: the first client the node has (curl, wget, python3); exit 0 on a 2xx answer.
http_ok() {
    if command -v curl >/dev/null; then curl -fsS -m 5 -o /dev/null "$1"
    elif command -v wget >/dev/null; then wget -q -T 5 -O /dev/null "$1"
    else python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)' "$1"
    fi
}

# Wait (10 s at most) for process $1 to end: after a reload the old process finishes its connections and exits.
wait_gone() {
    for _ in $(seq 100); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.1
    done
    echo "haproxy: process $1 still running 10 s after it was asked to finish" >&2
}

case "$1" in
    install)
        command -v haproxy >/dev/null || {
            apt-get -o DPkg::Lock::Timeout=300 update -qq &&
                DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq haproxy
        }
        mkdir -p "$dir"
        ;;
    configure)
        backends=$(loom-config lb.backends | tr ',' ' ')
        if [ -z "$(echo "$backends" | tr -d ' ')" ]; then
            echo "haproxy: lb.backends is empty: no web node to balance over" >&2
            exit 1
        fi
        mkdir -p "$dir"
        {
            printf 'global\n    pidfile %s\n    maxconn 256\n' "$pidfile"
            # A request that cannot reach a backend (stopped, not yet marked down) is tried on another at once.
            printf 'defaults\n    mode http\n    retries 3\n    option redispatch 1\n'
            printf '    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n'
            printf 'frontend web\n    bind %s:%s\n    default_backend nodes\n' "$LOOM_BIND_V4" "$port"
            printf 'backend nodes\n    balance roundrobin\n'
            n=0
            for address in $backends; do
                n=$((n + 1))
                printf '    server web%s %s:%s check inter 1s rise 1\n' "$n" "$address" "$backend_port"
            done
        } >"$conf.new"
        haproxy -c -q -f "$conf.new"
        mv "$conf.new" "$conf"
        if running; then
            old=$(cat "$pidfile")
            haproxy -D -f "$conf" -p "$pidfile" -sf "$old"
            wait_gone "$old"
        fi
        echo "haproxy: $LOOM_BIND_V4:$port over $n backend(s):$(printf ' %s' $backends)"
        ;;
    start) running || haproxy -D -f "$conf" -p "$pidfile" ;;
    stop)
        if running; then
            old=$(cat "$pidfile")
            kill "$old"
            wait_gone "$old"
            rm -f "$pidfile"
        fi
        ;;
    remove) rm -rf "$dir" ;;
    check)
        # A request through the balancer: haproxy answers 503 itself when no backend is up.
        running || { echo "haproxy is not running (no live process for $pidfile)" >&2; exit 1; }
        http_ok "http://$LOOM_BIND_V4:$port/" ||
            { echo "haproxy on $LOOM_BIND_V4:$port has no live backend (or does not answer)" >&2; exit 1; }
        echo "haproxy on $LOOM_BIND_V4:$port reaches a live backend"
        ;;
    *)
        echo "haproxy.sh: unknown action $1" >&2
        exit 2
        ;;
esac
