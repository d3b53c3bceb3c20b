#!/bin/sh
# nginx web server: serves web.message (config) and the node's name on web.port (default 8080), bound to the
# node's own address. Config, pages, logs and pid live in ~/.loom/services/nginx, so nodes sharing a
# machine (lab hosts) never share state.
set -eu
dir="$HOME/.loom/services/nginx"
conf="$dir/nginx.conf"
port=$(loom-config web.port 8080)

running() { [ -f "$dir/nginx.pid" ] && kill -0 "$(cat "$dir/nginx.pid")" 2>/dev/null; }

case "$1" in
    install)
        command -v nginx >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light; }
        mkdir -p "$dir/html" "$dir/logs" "$dir/tmp"
        ;;
    configure)
        message=$(loom-config web.message "Hello from Loom")
        cat >"$conf" <<CONF
daemon on;
pid $dir/nginx.pid;
error_log $dir/logs/error.log;
worker_processes 1;
events { worker_connections 256; }
http {
    access_log $dir/logs/access.log;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    server {
        listen $LOOM_BIND_V4:$port;
        location / { root $dir/html; default_type text/plain; }
    }
}
CONF
        printf '%s from %s\n' "$message" "$LOOM_HOSTNAME" >"$dir/html/index.html"
        nginx -t -q -c "$conf" -p "$dir"
        if running; then nginx -s reload -c "$conf" -p "$dir"; fi
        ;;
    start)
        running || nginx -c "$conf" -p "$dir"
        for _ in 1 2 3 4 5 6 7 8 9 10; do running && exit 0; sleep 0.2; done
        echo "nginx did not start; see $dir/logs/error.log" >&2; tail -n 20 "$dir/logs/error.log" >&2; exit 1
        ;;
    stop)
        if running; then nginx -s quit -c "$conf" -p "$dir"; fi
        for _ in 1 2 3 4 5 6 7 8 9 10; do running || exit 0; sleep 0.2; done
        kill "$(cat "$dir/nginx.pid")" 2>/dev/null || true
        ;;
    remove) rm -rf "$dir" ;;
    *) echo "nginx.sh: unknown action $1" >&2; exit 2 ;;
esac
