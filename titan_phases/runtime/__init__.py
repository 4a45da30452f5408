"""Process-level runtime: the CPU/gloo layer, how ranks agree on bad input and how they leave."""
