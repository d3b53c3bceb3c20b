# The redis service of web-cluster-puppet: what class loom_redis does depends on the action Loom runs
# ($facts['loom_action']: install, configure, start, stop or remove).
include loom_redis
