"""Timing, metrics sinks and reports."""
