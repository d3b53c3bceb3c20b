# base: every node knows every other node by name. Keeps one block per cluster, between marker lines naming
# the cluster, in the hosts file (config base.hosts_file, default /etc/hosts); the rest is left as it was.
# The block is rendered to ~/.loom/services/base/hosts.block and copied in by this module's rewrite-hosts, in
# place: on lab hosts /etc/hosts is a bind mount, which Puppet's file resource (a rename) cannot replace.
class loom_base {
  $services = "${facts['loom_home']}/.loom/services"
  $dir = "${services}/base"
  $hosts_file = lookup('config.base.hosts_file', String, 'first', '/etc/hosts')
  $cluster = lookup('cluster.name', String)
  $rewrite = "/bin/sh ${module_directory('loom_base')}/files/rewrite-hosts '${hosts_file}' '${cluster}'"
  Exec { path => ['/usr/sbin', '/usr/bin', '/sbin', '/bin'] }

  case $facts['loom_action'] {
    'install': {
      file { [$services, $dir]: ensure => directory, mode => '0755' }
      exec { "touch ${hosts_file}": creates => $hosts_file }
    }
    'configure': {
      $block = "${dir}/hosts.block"
      file { [$services, $dir]: ensure => directory, mode => '0755' }
      file { $block:
        ensure  => file,
        mode    => '0644',
        content => epp('loom_base/hosts.epp', { 'nodes' => lookup('nodes', Array[Hash]) }),
      }
      exec { 'the cluster block of the hosts file':
        command => "${rewrite} '${block}'",
        unless  => "${rewrite} '${block}' --check",
        require => File[$block],
      }
    }
    'remove': {
      exec { 'the cluster block leaves the hosts file':
        command => "${rewrite} /dev/null",
        unless  => "${rewrite} /dev/null --check",
      }
      -> file { $dir: ensure => absent, force => true }
    }
    default: { fail("loom_base: unknown action ${facts['loom_action']}") }
  }
}
