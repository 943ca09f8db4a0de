"""Pipeline presets, attention backends, latent edit ops and the correction loop (see DESIGN.md)."""
