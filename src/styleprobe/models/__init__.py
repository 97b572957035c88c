"""The models: presets, where their files come from, devices and memory, layer maps, the tiny and toy models."""
