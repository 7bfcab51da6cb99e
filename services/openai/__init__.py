"""OpenAI Images adapter: GPT image models, base64 output, token usage."""
