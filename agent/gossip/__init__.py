"""The Latent spore: SWIM rules (pure) and the I/O shell that carries them."""
