#!/bin/sh
# base: every node knows every other node by name. Keeps one managed block per cluster, between marker lines
# naming the cluster, in the hosts file (config base.hosts_file, default /etc/hosts); the rest of the file is
# left as it was. Rewritten under a lock (two actions on one node at once), in place rather than replaced by
# a new file: on lab hosts /etc/hosts is a bind mount, which a rename cannot replace.
set -eu
dir="$HOME/.loom/services/base"
hosts_file=$(loom-config base.hosts_file /etc/hosts)
begin="# loom cluster $LOOM_CLUSTER begin"
end="# loom cluster $LOOM_CLUSTER end"

rewrite() { # $1: the new block ("" removes it)
    mkdir -p "$dir"
    exec 9>"$dir/hosts.lock"
    flock 9
    awk -v b="$begin" -v e="$end" '$0==b{skip=1} !skip{print} $0==e{skip=0}' "$hosts_file" >"$dir/hosts.new"
    if [ -n "$1" ]; then printf '%s\n%s\n%s\n' "$begin" "$1" "$end" >>"$dir/hosts.new"; fi
    cat "$dir/hosts.new" >"$hosts_file"
    rm -f "$dir/hosts.new"
}

case "$1" in
    install)
        mkdir -p "$dir"
        touch "$hosts_file"
        ;;
    configure)
        block=$(loom-config --hosts)
        rewrite "$block"
        echo "base: $(printf '%s\n' "$block" | grep -c .) node(s) in $hosts_file"
        ;;
    remove)
        rewrite ""
        rm -rf "$dir"
        ;;
    *)
        echo "base.sh: unknown action $1" >&2
        exit 2
        ;;
esac
