"""Tests inside chain files, run by ``eslabon test``: cases, checks, the runner, reports.

``cases`` expands a chain's ``tests`` (inline and files of cases) into :class:`~cases.Case`
objects; ``runner`` runs them on each model through the batch runner; ``assertions`` judges each
finished run; ``reports`` draws the matrix and writes JSON and JUnit XML (docs/testing.md).
"""
