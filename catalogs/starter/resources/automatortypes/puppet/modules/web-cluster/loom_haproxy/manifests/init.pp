# haproxy load balancer: round-robin over lb.backends (config; in the template a macro listing the web nodes'
# addresses, comma-separated) on lb.port (default 8080), bound to the node's own address; the backends listen
# on web.port (default 8080). Config and pid live in ~/.loom/services/haproxy.
#
# The commands are single-quoted (no Puppet interpolation) and get their paths from the environment.
class loom_haproxy {
  $services = "${facts['loom_home']}/.loom/services"
  $dir = "${services}/haproxy"
  $conf = "${dir}/haproxy.cfg"
  $running = '[ -f "$DIR/haproxy.pid" ] && kill -0 "$(cat "$DIR/haproxy.pid")" 2>/dev/null'
  Exec {
    path        => ['/usr/sbin', '/usr/bin', '/sbin', '/bin'],
    provider    => shell,
    environment => ["DIR=${dir}", 'DEBIAN_FRONTEND=noninteractive'],
  }

  case $facts['loom_action'] {
    'install': {
      exec { 'haproxy is installed':
        command => 'apt-get -o DPkg::Lock::Timeout=300 update -qq && apt-get -o DPkg::Lock::Timeout=300 install -y -qq haproxy',
        unless  => 'command -v haproxy',
        timeout => 900,
      }
      file { [$services, $dir]: ensure => directory, mode => '0755' }
    }
    'configure': {
      $backends = String(lookup('config.lb.backends', Data, 'first', '')).split(/[\s,]+/).filter |$b| { $b != '' }
      if $backends.empty { fail('haproxy: lb.backends is empty: no web node to balance over') }
      file { $conf:
        ensure       => file,
        mode         => '0644',
        content      => epp('loom_haproxy/haproxy.cfg.epp', {
          'dir'          => $dir,
          'bind'         => $facts['loom_bind_v4'],
          'port'         => lookup('config.lb.port', Variant[Integer, String], 'first', 8080),
          'backend_port' => lookup('config.web.port', Variant[Integer, String], 'first', 8080),
          'backends'     => $backends,
        }),
        validate_cmd => 'haproxy -c -q -f %',
      }
      # A new process takes over (-sf); the old one finishes its connections and exits: wait for that.
      exec { 'a running haproxy takes the new configuration':
        command     => @(RELOAD),
          old=$(cat "$DIR/haproxy.pid")
          haproxy -D -f "$DIR/haproxy.cfg" -p "$DIR/haproxy.pid" -sf "$old"
          for _ in $(seq 100); do kill -0 "$old" 2>/dev/null || exit 0; sleep 0.1; done
          echo "haproxy: process $old still running 10 s after it was asked to finish" >&2
          | RELOAD
        onlyif      => $running,
        refreshonly => true,
        subscribe   => File[$conf],
      }
    }
    'start': {
      exec { 'haproxy runs':
        command => 'haproxy -D -f "$DIR/haproxy.cfg" -p "$DIR/haproxy.pid"',
        unless  => $running,
      }
    }
    'stop': {
      exec { 'haproxy is stopped':
        command => @(STOP),
          old=$(cat "$DIR/haproxy.pid")
          kill "$old"
          for _ in $(seq 100); do kill -0 "$old" 2>/dev/null || break; sleep 0.1; done
          rm -f "$DIR/haproxy.pid"
          | STOP
        onlyif  => $running,
      }
    }
    'remove': {
      file { $dir: ensure => absent, force => true }
    }
    default: { fail("loom_haproxy: unknown action ${facts['loom_action']}") }
  }
}
