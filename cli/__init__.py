"""The ``sgma-batch`` command line: thin Typer commands over the library."""
