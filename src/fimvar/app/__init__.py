"""The ``fimvar`` command line."""
