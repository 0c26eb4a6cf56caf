"""Every exit code of both commands, in one place.

``mqttbuffer`` (and its workers) exit as sysexits.h says; ``mqttbufferctl`` exits as LSB init
scripts do, so monitoring can run ``mqttbufferctl status`` as a check.
"""

# mqttbuffer
EX_OK = 0
EX_SOFTWARE = 70        # a worker's unexpected exception (the supervisor restarts it)
EX_TEMPFAIL = 75        # another mqttbuffer holds the store or the control socket
EX_CONFIG = 78          # a config problem, told in one line; systemd does not restart on it

# mqttbufferctl
CTL_OK = 0
CTL_ERROR = 1           # the daemon answered with an error, or a check failed (doctor, dead-letters)
CTL_DEGRADED = 1        # status: the daemon runs but is degraded
CTL_USAGE = 2           # bad arguments or an unusable config
CTL_NOT_RUNNING = 3
