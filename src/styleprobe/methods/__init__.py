"""Methods as plug-ins: a name in the `method` config group -> a `Method` (see `base.py` for the hooks).

    ip_adapter/     IP-Adapter's image branch in cross-attention (attn2), InstantStyle's layers and subtraction
    style_aligned/  StyleAligned's shared self-attention (attn1) with a DDIM-inverted reference
    b_lora/         B-LoRA: a LoRA trained per reference, on the transformer layers its patterns select
    visual_style_prompting/   Visual Style Prompting's key/value swap in self-attention (attn1) with a reference row,
                    and StyleKeeper's negative visual query guidance

Each method is a package whose `plugin.py` registers it; `base.registry()` imports them all on first use, so a new
method is one folder here plus its config file in experiments/method/. What several methods share lives beside
them: `base.py` (the hooks and the registry), `attention.py` (the processor steps around the attention itself).
"""
