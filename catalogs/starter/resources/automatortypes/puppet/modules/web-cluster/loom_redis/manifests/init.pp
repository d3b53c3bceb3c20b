# redis cache on cache.port (default 6379), bound to the node's own address, at most cache.maxmemory (default
# 64mb); config, data, log and pid in ~/.loom/services/redis (private to the SSH user: the config may hold
# cache.password). redis-cli reads the password from its environment, so it never shows in the process list.
#
# The commands are single-quoted (no Puppet interpolation) and get their paths from the environment.
class loom_redis {
  $services = "${facts['loom_home']}/.loom/services"
  $dir = "${services}/redis"
  $bind = $facts['loom_bind_v4']
  $port = lookup('config.cache.port', Variant[Integer, String], 'first', 6379)
  $password = lookup('config.cache.password', String, 'first', '')
  $running = '[ -f "$DIR/redis.pid" ] && kill -0 "$(cat "$DIR/redis.pid")" 2>/dev/null'
  Exec {
    path        => ['/usr/sbin', '/usr/bin', '/sbin', '/bin'],
    provider    => shell,
    environment => ["DIR=${dir}", "BIND=${bind}", "PORT=${port}", 'DEBIAN_FRONTEND=noninteractive']
      + ($password ? { '' => [], default => ["REDISCLI_AUTH=${password}"] }),
  }

  case $facts['loom_action'] {
    'install': {
      exec { 'redis is installed':
        command => 'apt-get -o DPkg::Lock::Timeout=300 update -qq && apt-get -o DPkg::Lock::Timeout=300 install -y -qq redis-server',
        unless  => 'command -v redis-server',
        timeout => 900,
      }
      file { $services: ensure => directory, mode => '0755' }
      file { $dir: ensure => directory, mode => '0700' }
    }
    'configure': {
      # Applied at the next start, as in the shell variant.
      file { "${dir}/redis.conf":
        ensure    => file,
        mode      => '0600',
        show_diff => false,
        content   => epp('loom_redis/redis.conf.epp', {
          'dir'       => $dir,
          'bind'      => $bind,
          'port'      => $port,
          'maxmemory' => lookup('config.cache.maxmemory', String, 'first', '64mb'),
          'password'  => $password,
        }),
      }
    }
    'start': {
      exec { 'redis runs and answers':
        command => @(START),
          [ -f "$DIR/redis.pid" ] && kill -0 "$(cat "$DIR/redis.pid")" 2>/dev/null || redis-server "$DIR/redis.conf"
          for _ in $(seq 25); do redis-cli -h "$BIND" -p "$PORT" ping >/dev/null 2>&1 && exit 0; sleep 0.2; done
          echo "redis did not answer on $BIND:$PORT; see $DIR/redis.log" >&2; tail -n 20 "$DIR/redis.log" >&2; exit 1
          | START
        unless  => "${running} && redis-cli -h \"\$BIND\" -p \"\$PORT\" ping",
      }
    }
    'stop': {
      exec { 'redis is stopped':
        command => @(STOP),
          redis-cli -h "$BIND" -p "$PORT" shutdown nosave >/dev/null 2>&1 || kill "$(cat "$DIR/redis.pid")" 2>/dev/null || true
          for _ in $(seq 50); do [ -f "$DIR/redis.pid" ] && kill -0 "$(cat "$DIR/redis.pid")" 2>/dev/null || exit 0; sleep 0.2; done
          echo "redis did not stop within 10 s" >&2; exit 1
          | STOP
        onlyif  => $running,
      }
    }
    'remove': {
      file { $dir: ensure => absent, force => true }
    }
    default: { fail("loom_redis: unknown action ${facts['loom_action']}") }
  }
}
