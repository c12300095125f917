"""Errors the user can fix. The CLI prints them as one line (no traceback) and exits with status 2."""


class UserError(ValueError):
    """Bad input: a recipe, path, image or setting. The message names the file/row/key and what to do."""
