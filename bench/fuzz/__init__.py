"""Property-based fuzzing (hypothesis) of the Router's request validation and adapters' parsing."""
