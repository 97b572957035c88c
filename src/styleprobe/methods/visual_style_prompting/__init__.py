"""Visual Style Prompting: each image keeps its own queries and takes a reference's keys and values (`plugin.py`)."""
