#!/bin/sh
# nginx web server: answers "<web.message> from <node name>" on web.port (default 8080), bound to the node's
# own address. Config, logs and pid live in ~/.loom/services/nginx, so nodes sharing a machine (lab hosts)
# never share state.
#
# The answer is part of the config (a "return 200"), not a page on disk: ~/.loom is private to the SSH user
# (it holds the task files), and nginx's workers run as an unprivileged user that could not read a page there.
set -eu
dir="$HOME/.loom/services/nginx"
conf="$dir/nginx.conf"
port=$(loom-config web.port 8080)

running() { [ -f "$dir/nginx.pid" ] && kill -0 "$(cat "$dir/nginx.pid")" 2>/dev/null; }

# The health check's HTTP GET: the first client the node has (curl, wget, python3); exit 0 on a 2xx answer.
http_ok() {
    if command -v curl >/dev/null; then curl -fsS -m 5 -o /dev/null "$1"
    elif command -v wget >/dev/null; then wget -q -T 5 -O /dev/null "$1"
    else python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)' "$1"
    fi
}

# Text for a double-quoted nginx string: backslash and quote escaped, newlines as \n, and "$" (which would
# start a variable) through the $loom_dollar variable the config defines. The whole text is read into sed's
# pattern space first (the loop; "$!" so a one-line text is not printed before the substitutions).
quoted() {
    printf '%s' "$1" | sed -e ':a' -e '$!{' -e 'N' -e 'ba' -e '}' -e 's/\\/\\\\/g' -e 's/"/\\"/g' \
        -e 's/\$/${loom_dollar}/g' -e 's/\n/\\n/g'
}

# The master's worker processes (children), read from /proc: no procps needed on the node.
workers() {
    master=$(cat "$dir/nginx.pid")
    for stat in /proc/[0-9]*/stat; do
        # shellcheck disable=SC2034 # pid (comm) state ppid ...
        read -r pid comm state ppid rest <"$stat" 2>/dev/null && [ "$ppid" = "$master" ] && echo "$pid"
    done
    return 0
}

# A reload is asynchronous: the master starts new workers and lets the old ones finish. Wait until the old
# ones are gone, so when configure ends every new request gets the new config.
reload() {
    old=$(workers)
    nginx -s reload -c "$conf" -p "$dir"
    for _ in $(seq 100); do
        alive=""
        for pid in $old; do kill -0 "$pid" 2>/dev/null && alive="$alive $pid"; done
        [ -z "$alive" ] && return 0
        sleep 0.1
    done
    echo "nginx: old workers$alive still running 10 s after the reload" >&2
}

case "$1" in
    install)
        command -v nginx >/dev/null || {
            apt-get -o DPkg::Lock::Timeout=300 update -qq &&
                DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq nginx-light
        }
        mkdir -p "$dir/logs" "$dir/tmp"
        ;;
    configure)
        mkdir -p "$dir/logs" "$dir/tmp"
        answer="$(quoted "$(loom-config web.message "Hello from Loom")") from $(quoted "$LOOM_HOSTNAME")\\n"
        cat >"$conf.new" <<CONF
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
    geo \$loom_dollar { default "\$"; }
    server {
        listen $LOOM_BIND_V4:$port;
        default_type text/plain;
        location / { return 200 "$answer"; }
    }
}
CONF
        nginx -t -q -c "$conf.new" -p "$dir"
        mv "$conf.new" "$conf"
        if running; then reload; fi
        echo "nginx: serves on $LOOM_BIND_V4:$port"
        ;;
    start)
        running || nginx -c "$conf" -p "$dir"
        for _ in 1 2 3 4 5 6 7 8 9 10; do running && exit 0; sleep 0.2; done
        echo "nginx did not start; see $dir/logs/error.log" >&2
        tail -n 20 "$dir/logs/error.log" >&2
        exit 1
        ;;
    stop)
        if running; then nginx -s quit -c "$conf" -p "$dir"; fi
        for _ in $(seq 50); do running || exit 0; sleep 0.2; done
        kill "$(cat "$dir/nginx.pid")" 2>/dev/null || true
        ;;
    remove) rm -rf "$dir" ;;
    check)
        running || { echo "nginx is not running (no live process for $dir/nginx.pid)" >&2; exit 1; }
        http_ok "http://$LOOM_BIND_V4:$port/" || { echo "nginx does not serve on $LOOM_BIND_V4:$port" >&2; exit 1; }
        echo "nginx serves on $LOOM_BIND_V4:$port"
        ;;
    *)
        echo "nginx.sh: unknown action $1" >&2
        exit 2
        ;;
esac
