"""IP-Adapter with InstantStyle's per-layer injection and content subtraction (`plugin.py`)."""
