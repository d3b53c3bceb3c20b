#!/bin/sh
# redis cache on cache.port (default 6379), bound to the node's own address; data in ~/.loom/services/redis.
set -eu
dir="$HOME/.loom/services/redis"
port=$(loom-config cache.port 6379)

running() { [ -f "$dir/redis.pid" ] && kill -0 "$(cat "$dir/redis.pid")" 2>/dev/null; }

case "$1" in
    install)
        command -v redis-server >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; }
        mkdir -p "$dir"
        ;;
    configure)
        printf 'bind %s\nport %s\ndir %s\npidfile %s/redis.pid\nlogfile %s/redis.log\ndaemonize yes\nsave ""\nmaxmemory %s\n' \
            "$LOOM_BIND_V4" "$port" "$dir" "$dir" "$dir" "$(loom-config cache.maxmemory 64mb)" >"$dir/redis.conf"
        ;;
    start)
        running || redis-server "$dir/redis.conf"
        for _ in 1 2 3 4 5 6 7 8 9 10; do redis-cli -h "$LOOM_BIND_V4" -p "$port" ping >/dev/null 2>&1 && exit 0; sleep 0.2; done
        echo "redis did not answer; see $dir/redis.log" >&2; exit 1
        ;;
    stop) if running; then redis-cli -h "$LOOM_BIND_V4" -p "$port" shutdown nosave || kill "$(cat "$dir/redis.pid")"; fi ;;
    remove) rm -rf "$dir" ;;
    *) echo "redis.sh: unknown action $1" >&2; exit 2 ;;
esac
