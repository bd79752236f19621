"""Data sources for ppfer-jax: the built-in synthetic talking-face set (``synthetic``) and the real-data builders."""
