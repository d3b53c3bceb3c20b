#!/bin/sh
# base: every node knows every other node by name. Keeps one managed block per cluster in the hosts file
# (config base.hosts_file, default /etc/hosts), written under a lock: on lab hosts several nodes share it.
set -eu
hosts_file=$(loom-config base.hosts_file /etc/hosts)
begin="# loom cluster $LOOM_CLUSTER begin"
end="# loom cluster $LOOM_CLUSTER end"

rewrite() {  # $1: the new block ("" removes it)
    exec 9>>"$hosts_file.loom-lock"
    flock 9
    tmp=$(mktemp "$hosts_file.XXXXXX")
    awk -v b="$begin" -v e="$end" '$0==b{skip=1} !skip{print} $0==e{skip=0}' "$hosts_file" >"$tmp"
    if [ -n "$1" ]; then printf '%s\n%s\n%s\n' "$begin" "$1" "$end" >>"$tmp"; fi
    chmod 644 "$tmp"
    cat "$tmp" >"$hosts_file"   # keep the file's inode: on lab hosts it may be a bind mount
    rm -f "$tmp"
}

case "$1" in
    install) touch "$hosts_file" ;;
    configure) rewrite "$(loom-config --hosts)"; echo "hosts: $(loom-config --hosts | wc -l) node(s) in $hosts_file" ;;
    remove) rewrite "" ;;
    *) echo "base.sh: unknown action $1" >&2; exit 2 ;;
esac
