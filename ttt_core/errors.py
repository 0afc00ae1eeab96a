"""Errors a user can act on: the CLI prints them without a traceback and exits 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class TTTError(Exception):
    """A problem with the user's input (recipe, plugin, run directory), reported in one line each."""

    def __init__(self, *lines: str) -> None:
        self.lines = [line for line in lines if line]
        super().__init__("\n".join(self.lines))


class RecipeError(TTTError):
    """Every problem found in one recipe, collected before anything is built."""


class RegistryError(TTTError):
    """Duplicate or unknown components."""


class PluginError(TTTError):
    """A plugin that failed to load is needed by what the user asked for."""


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """A ` (did you mean 'x'?)` suffix, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
