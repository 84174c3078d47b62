"""Small-scale reproduction of Activation Beacon on a code LM, and the default model (see run.py)."""
