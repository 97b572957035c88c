"""The run pipeline: plan, generate, store, score; a sweep from its config to its results folder."""
