#!/bin/sh
# redis cache on cache.port (default 6379), bound to the node's own address, at most cache.maxmemory (default
# 64mb); config, data, log and pid in ~/.loom/services/redis (private to the SSH user: the config may hold
# the password).
#
# With cache.password clients must authenticate. Without one, redis's protected mode (which, with no password,
# refuses every client not on loopback) is turned off: the cache listens only on the node's own address, on
# the cluster's private network, and the web nodes must reach it.
set -eu
dir="$HOME/.loom/services/redis"
port=$(loom-config cache.port 6379)
password=$(loom-config cache.password "")
# redis-cli reads the password from its environment, so it never shows in the process list.
if [ -n "$password" ]; then export REDISCLI_AUTH="$password"; fi

running() { [ -f "$dir/redis.pid" ] && kill -0 "$(cat "$dir/redis.pid")" 2>/dev/null; }

case "$1" in
    install)
        command -v redis-server >/dev/null || {
            apt-get -o DPkg::Lock::Timeout=300 update -qq &&
                DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq redis-server
        }
        mkdir -p "$dir"
        ;;
    configure)
        umask 077
        mkdir -p "$dir"
        {
            printf 'bind %s\nport %s\ndir %s\npidfile %s/redis.pid\nlogfile %s/redis.log\n' \
                "$LOOM_BIND_V4" "$port" "$dir" "$dir" "$dir"
            printf 'daemonize yes\nsave ""\nmaxmemory %s\n' "$(loom-config cache.maxmemory 64mb)"
            if [ -n "$password" ]; then
                printf 'requirepass "%s"\n' "$(printf '%s' "$password" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g')"
            else
                printf 'protected-mode no\n'
            fi
        } >"$dir/redis.conf.new"
        mv "$dir/redis.conf.new" "$dir/redis.conf"
        echo "redis: $LOOM_BIND_V4:$port (applied at the next start)"
        ;;
    start)
        running || redis-server "$dir/redis.conf"
        for _ in $(seq 25); do
            redis-cli -h "$LOOM_BIND_V4" -p "$port" ping >/dev/null 2>&1 && exit 0
            sleep 0.2
        done
        echo "redis did not answer on $LOOM_BIND_V4:$port; see $dir/redis.log" >&2
        tail -n 20 "$dir/redis.log" >&2 || true
        exit 1
        ;;
    stop)
        running || exit 0
        redis-cli -h "$LOOM_BIND_V4" -p "$port" shutdown nosave >/dev/null 2>&1 || kill "$(cat "$dir/redis.pid")" 2>/dev/null || true
        for _ in $(seq 50); do
            running || exit 0
            sleep 0.2
        done
        echo "redis did not stop within 10 s" >&2
        exit 1
        ;;
    remove) rm -rf "$dir" ;;
    check)
        answer=$(redis-cli -h "$LOOM_BIND_V4" -p "$port" ping 2>&1) || true
        [ "$answer" = "PONG" ] || { echo "redis on $LOOM_BIND_V4:$port does not answer PING: $answer" >&2; exit 1; }
        echo "redis on $LOOM_BIND_V4:$port answers PING"
        ;;
    *)
        echo "redis.sh: unknown action $1" >&2
        exit 2
        ;;
esac
