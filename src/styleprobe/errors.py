"""Errors a researcher can fix: each message is one line naming the problem and the fix."""


class StyleprobeError(Exception):
    """Base class for styleprobe's own errors."""


class ConfigError(StyleprobeError):
    """Bad input found before any model is loaded (config, data, layer names, numbers)."""


class ModelUnavailableError(StyleprobeError):
    """Weights that cannot be found locally and cannot be downloaded."""


class AnalysisError(StyleprobeError):
    """A results table that cannot answer the question asked (missing folder, column or condition)."""


def one_line(message: str) -> str:
    """Collapse newlines so every error stays a single line in logs and Hydra output."""
    return " ".join(message.split("\n")).replace("\r", " ")


def config_error(message: str) -> ConfigError:
    """Build a ConfigError whose message is guaranteed to be one line."""
    return ConfigError(one_line(message))
