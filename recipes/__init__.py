"""mycelium."""
