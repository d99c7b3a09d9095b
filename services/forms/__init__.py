"""The forms service."""
