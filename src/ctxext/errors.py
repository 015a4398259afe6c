"""User-facing errors: one line that says what is wrong and what is accepted."""


class CtxextError(Exception):
    """A bad input the user can fix. The CLI prints it as one line and exits with status 2."""


def did_you_mean(word: str, choices: list[str]) -> str:
    """' (did you mean X?)' for the closest choice, or '' when nothing is close."""
    import difflib

    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""
