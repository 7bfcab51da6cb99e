"""PromptEnhancer: rewrites image prompts through OpenAI-compatible text providers."""
