"""The running parts of ``didgw run``: each side of the live gateway, and the runner.

* ``runner``: the process: builds every side from the config, signals, reload, shutdown;
* ``mqtt_devices``, ``mqtt_people``, ``coap_devices``: devices and people where they talk;
* ``people``: the people's desk both MQTT and HTTP use (verify, permissions, record);
* ``http``: the people's front door (pages, sign-in with OpenID4VP);
* ``workers``: reading workers, one process per core, each a whole verify → record → ack;
* ``ingest``: the reading pipeline (verify → record durably → acknowledge);
* ``recorder``: a process's one writer to the record, with group commit;
* ``anchoring``: checkpoints out to the ledger, one round at a time;
* ``energy``: the meters' reader threads and the market's clock;
* ``disk``: the disk guard that refuses readings before the card fills up.

These modules own threads, sockets and the clock. They may import the foundations, the
core, ``transports``, ``service`` and ``ops``; only ``cli`` imports them.
"""
