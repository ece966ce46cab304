"""Shared fixtures live in plugin modules beside the tests; this file only registers them."""

pytest_plugins = ["serverproc", "services"]
