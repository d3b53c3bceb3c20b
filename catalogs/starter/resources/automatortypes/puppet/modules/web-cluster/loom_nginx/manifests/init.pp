# nginx web server: answers "<web.message> from <node name>" on web.port (default 8080), bound to the node's
# own address. Config, logs and pid live in ~/.loom/services/nginx of the SSH user, so nodes sharing a machine
# never share state. The answer is part of the config (a "return 200"), not a page on disk: ~/.loom is
# private to the SSH user, and nginx's workers run as an unprivileged user that could not read a page there.
#
# The commands are single-quoted (no Puppet interpolation) and get their paths from the environment.
class loom_nginx {
  $services = "${facts['loom_home']}/.loom/services"
  $dir = "${services}/nginx"
  $conf = "${dir}/nginx.conf"
  $running = '[ -f "$DIR/nginx.pid" ] && kill -0 "$(cat "$DIR/nginx.pid")" 2>/dev/null'
  Exec {
    path        => ['/usr/sbin', '/usr/bin', '/sbin', '/bin'],
    provider    => shell,
    environment => ["DIR=${dir}", 'DEBIAN_FRONTEND=noninteractive'],
  }

  case $facts['loom_action'] {
    'install': {
      exec { 'nginx is installed':
        command => 'apt-get -o DPkg::Lock::Timeout=300 update -qq && apt-get -o DPkg::Lock::Timeout=300 install -y -qq nginx-light',
        unless  => 'command -v nginx',
        timeout => 900,
      }
      file { [$services, $dir, "${dir}/logs", "${dir}/tmp"]: ensure => directory, mode => '0755' }
    }
    'configure': {
      file { $conf:
        ensure       => file,
        mode         => '0644',
        content      => epp('loom_nginx/nginx.conf.epp', {
          'dir'     => $dir,
          'bind'    => $facts['loom_bind_v4'],
          'port'    => lookup('config.web.port', Variant[Integer, String], 'first', 8080),
          'message' => lookup('config.web.message', String, 'first', 'Hello from Loom'),
          'name'    => $facts['loom_hostname'],
        }),
        validate_cmd => "nginx -t -q -c % -p '${dir}'",
      }
      # A reload is asynchronous: the master starts new workers and lets the old ones finish. Wait until the
      # old ones are gone, so when configure ends every new request gets the new config.
      exec { 'a running nginx reloads the new configuration':
        command     => @(RELOAD),
          master=$(cat "$DIR/nginx.pid")
          old=$(grep -l "^PPid:[[:space:]]*$master\$" /proc/[0-9]*/status 2>/dev/null | cut -d/ -f3)
          nginx -s reload -c "$DIR/nginx.conf" -p "$DIR"
          for _ in $(seq 100); do
            alive=""; for pid in $old; do kill -0 "$pid" 2>/dev/null && alive="$alive $pid"; done
            [ -z "$alive" ] && exit 0; sleep 0.1
          done
          echo "nginx: old workers$alive still running 10 s after the reload" >&2
          | RELOAD
        onlyif      => $running,
        refreshonly => true,
        subscribe   => File[$conf],
      }
    }
    'start': {
      exec { 'nginx runs':
        command => @(START),
          running() { [ -f "$DIR/nginx.pid" ] && kill -0 "$(cat "$DIR/nginx.pid")" 2>/dev/null; }
          nginx -c "$DIR/nginx.conf" -p "$DIR"
          for _ in $(seq 10); do running && exit 0; sleep 0.2; done
          echo "nginx did not start; see $DIR/logs/error.log" >&2; tail -n 20 "$DIR/logs/error.log" >&2; exit 1
          | START
        unless  => $running,
      }
    }
    'stop': {
      exec { 'nginx is stopped':
        command => @(STOP),
          running() { [ -f "$DIR/nginx.pid" ] && kill -0 "$(cat "$DIR/nginx.pid")" 2>/dev/null; }
          nginx -s quit -c "$DIR/nginx.conf" -p "$DIR"
          for _ in $(seq 50); do running || exit 0; sleep 0.2; done
          kill "$(cat "$DIR/nginx.pid")" 2>/dev/null || true
          | STOP
        onlyif  => $running,
      }
    }
    'remove': {
      file { $dir: ensure => absent, force => true }
    }
    default: { fail("loom_nginx: unknown action ${facts['loom_action']}") }
  }
}
