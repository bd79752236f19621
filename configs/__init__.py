"""Experiment configs: each file defines ``get_config(arg)`` (ml_collections)."""
