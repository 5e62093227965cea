"""Shared building blocks of the voiceprint scripts (one module per concern)."""
