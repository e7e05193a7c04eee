"""Seeing runs: usage and cost (meter), the run log (runlog), tracing (tracing)."""
