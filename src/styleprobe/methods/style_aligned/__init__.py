"""StyleAligned: shared self-attention with a DDIM-inverted reference (`plugin.py`)."""
