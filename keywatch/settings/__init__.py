"""Configuration: the schema (schema.py), loading and the inventory (loader.py), secret references
(secrets.py) and the field types sections share (types.py)."""
