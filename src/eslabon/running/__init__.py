"""Compiling a chain and running it: the one run core, steps, tools, structured output."""
