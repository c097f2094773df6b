"""Configuration: schema, loading, secret references."""

from keywatch.settings.load import ConfigError, Inventory, load, load_inventory

__all__ = ["ConfigError", "Inventory", "load", "load_inventory"]
