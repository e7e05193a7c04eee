"""The chain file: the format (pure data), loading, checking."""
