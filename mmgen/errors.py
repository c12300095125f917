"""Errors the user can fix. The CLI prints them as one line (no traceback) and exits with status 2."""


class UserError(ValueError):
    """Bad input: a recipe, path, image or setting. The message names the file/row/key and what to do."""


class OutputExistsError(UserError, FileExistsError):
    """An output path is taken by something this command must not overwrite (a file, an unrelated folder)."""


class MissingPathError(UserError, FileNotFoundError):
    """A path the user gave does not exist or lacks the file that makes it what it should be."""
