"""The inputs of a sweep: style sets (manifests and the built-in references) and prompt sets."""
