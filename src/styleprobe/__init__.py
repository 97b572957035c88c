"""styleprobe: find out, by measurement, where style lives inside a text-to-image diffusion model."""

__version__ = "0.1.0"
