"""Built-in callbacks, one module per family."""
