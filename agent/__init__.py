"""mycelium node agent and operator CLI: identity, signed state, spores, reconcile."""
