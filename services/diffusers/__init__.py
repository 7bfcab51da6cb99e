"""The diffusers backend: a team's own open-weights pipeline, run in-process on its GPU or CPU."""
