"""Process-level plumbing with no model knowledge: config files, atomic writes, jax.distributed start-up."""
