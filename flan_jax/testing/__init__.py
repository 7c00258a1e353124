"""Helpers shared by the tests (one module per topic); shipped so tests need no network."""
