"""Stage lists: the paper's method (``ppfer.py``), its robust variant (``robust.py``), the ablations
(``ablations.py``), and the stages and method rows of ``ppfer-jax run`` (``run.py``)."""
