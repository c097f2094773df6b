"""Leaks: knowing within seconds that a managed key is exposed, and containing it.

Receivers on the daemon's HTTP server (GitHub secret scanning webhooks, the GitHub partner format, generic
reports), provider-side signals (AWS quarantine and Health, keys gone or deactivated at the provider), the
leak tables, and containment (deactivate, leave every pool, rotate, alert). See docs/leaks.md.
"""
