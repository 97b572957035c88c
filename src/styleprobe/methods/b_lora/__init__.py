"""B-LoRA: a LoRA trained per reference, applied to chosen transformer layers (`plugin.py`)."""
