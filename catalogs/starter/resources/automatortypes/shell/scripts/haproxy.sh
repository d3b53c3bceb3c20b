#!/bin/sh
# haproxy load balancer: round-robin over lb.backends (config; in the templates a macro listing the web
# nodes' addresses) on lb.port (default 8080), bound to the node's own address.
set -eu
dir="$HOME/.loom/services/haproxy"
conf="$dir/haproxy.cfg"
port=$(loom-config lb.port 8080)
backend_port=$(loom-config web.port 8080)

running() { [ -f "$dir/haproxy.pid" ] && kill -0 "$(cat "$dir/haproxy.pid")" 2>/dev/null; }

case "$1" in
    install)
        command -v haproxy >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy; }
        mkdir -p "$dir"
        ;;
    configure)
        backends=$(loom-config lb.backends)
        {
            printf 'global\n    pidfile %s/haproxy.pid\n    maxconn 256\n' "$dir"
            printf 'defaults\n    mode http\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n'
            printf 'frontend web\n    bind %s:%s\n    default_backend nodes\n' "$LOOM_BIND_V4" "$port"
            printf 'backend nodes\n    balance roundrobin\n'
            n=0
            for address in $(echo "$backends" | tr ',' ' '); do
                n=$((n + 1)); printf '    server web%s %s:%s check inter 1s\n' "$n" "$address" "$backend_port"
            done
        } >"$conf.new"
        haproxy -c -q -f "$conf.new"
        mv "$conf.new" "$conf"
        if running; then haproxy -D -f "$conf" -p "$dir/haproxy.pid" -sf "$(cat "$dir/haproxy.pid")"; fi
        echo "haproxy: backends $backends"
        ;;
    start) running || haproxy -D -f "$conf" -p "$dir/haproxy.pid" ;;
    stop) if running; then kill "$(cat "$dir/haproxy.pid")"; rm -f "$dir/haproxy.pid"; fi ;;
    remove) rm -rf "$dir" ;;
    *) echo "haproxy.sh: unknown action $1" >&2; exit 2 ;;
esac
