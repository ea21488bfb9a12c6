"""Training side of the REPA toolkit: models, interpolants, losses, samplers, data, encoders, loop."""
