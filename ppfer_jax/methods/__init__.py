"""Methods: the PPFER stages (``ppfer.py``); baselines and compared systems come one file each."""
