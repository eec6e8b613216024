"""The commands beside the server: ``tcprules`` and ``tcprulescheck``."""
