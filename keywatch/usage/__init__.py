"""Usage, billing and budgets: who spends what, and a warning before the money runs out.

Collectors pull each provider's usage and cost figures on their own schedule and store them as idempotent
rollups (a re-pulled window replaces, never adds); budgets and forecasts read those rollups.
"""
