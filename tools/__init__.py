"""Maintenance scripts of the checkout (not installed): python3 -m tools.NAME."""
