"""Ray Tune sweeps over the latent size and architecture: each trial runs the same training code."""
