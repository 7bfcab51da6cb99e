"""The ComfyUI backend: a team's own ComfyUI server behind the ProviderService contract."""
