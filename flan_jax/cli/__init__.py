"""Command-line interface: `flan-jax COMMAND ...`, one module per command."""
