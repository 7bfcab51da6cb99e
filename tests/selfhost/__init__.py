"""Self-hosted backends: the diffusers worker and the ComfyUI adapter."""
