"""Prompt templates: how a method writes the reference's style (or its LoRA's token) into the prompt it generates with.

A template is a `str.format` string over the fields below, filled per item; it is checked when the config is read,
so a misspelt field fails before any model is loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from styleprobe.errors import ConfigError

if TYPE_CHECKING:
    from styleprobe.methods.base import Parts

#: The fields a template may use: the target prompt, the reference's style (its manifest's `style_prompt` when given,
#: else its `style`), the reference's content label, and the subject the prompt names.
TEMPLATE_FIELDS = ("prompt", "style", "content", "subject")


def check_template(template: str, where: str) -> None:
    """A one-line error naming the fields when `template` cannot be filled."""
    try:
        template.format(**{f: "x" for f in TEMPLATE_FIELDS})
    except (KeyError, IndexError, ValueError) as err:
        raise ConfigError(f"{where}={template!r} cannot be filled ({type(err).__name__}: {err}); "
                          f"use the fields {', '.join('{' + f + '}' for f in TEMPLATE_FIELDS)}") from None


def fill(template: str, parts: Parts) -> str:
    """The template filled for one item."""
    ref = parts.reference
    return template.format(prompt=parts.prompt.prompt, style=ref.style_prompt or ref.style, content=ref.content,
                           subject=parts.prompt.subject)
