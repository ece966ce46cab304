"""Persisting ticks and answering history queries: the store protocol, its backends, candles."""
