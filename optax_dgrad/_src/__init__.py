"""The implementation of optax_dgrad; the public names are exported by optax_dgrad."""
