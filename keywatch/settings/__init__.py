"""Configuration: schema, loading, secret references."""

from keywatch.settings.loader import ConfigError, Inventory, load, load_inventory

__all__ = ["ConfigError", "Inventory", "load", "load_inventory"]
