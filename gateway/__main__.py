"""``python -m gateway`` runs the ``didgw`` command."""

from gateway.cli import main

raise SystemExit(main())
