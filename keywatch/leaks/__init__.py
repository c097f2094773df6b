"""Leaks: finding exposed keys and containing them."""
