"""One module per provider, all implementing `base.ProviderAdapter`; found through `registry`."""
