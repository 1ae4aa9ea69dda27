"""Energy: the smart meter's P1 telegrams (``p1``) and the meters vouched for (``meter``).

Sans-IO: the serial port is in ``transports/serial.py`` and its threads in ``run/energy.py``;
the market itself is ``gateway.market``. May import the foundations and the core below it
(``identity``, ``chain``, ``registry``); never an edge.
"""
