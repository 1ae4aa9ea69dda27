"""Operations: what an integrator watches and what runs the gateway's neighbours.

* ``health``: the live and stored figures, in one place;
* ``metrics``: those figures as Prometheus metrics, served on loopback;
* ``status``: ``didgw status``, the health summary for a person;
* ``sdnotify``: systemd's notification protocol (ready, status, watchdog);
* ``logs``: one line per event, journald-friendly;
* ``broker``: a private mosquitto with the gateway's policy, for the demo, tests and benches;
* ``tls``: the gateway's certificate authority and the broker's certificate on disk.

They may import the foundations, the core and ``transports``; never ``run`` or ``cli``.
"""
