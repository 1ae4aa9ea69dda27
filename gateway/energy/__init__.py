"""Energy: the smart meter's P1 telegrams (``p1``) and the local market (``gateway.market``)."""
