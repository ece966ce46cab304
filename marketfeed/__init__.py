"""marketfeed: a real-time synthetic market-data server."""

__version__ = "0.1.0"
