"""The errors that mean bad input: every job exits 2 on them, with their one-line message.

Kept apart from the modules that raise them, so that the command line can name them without
loading torch or Ray."""


class DataError(ValueError):
    """An input file is unreadable or not what it should be; the message names the file."""


class ResourceError(ValueError):
    """The cluster cannot place what the job asks for; the message gives the numbers."""


class OutputExistsError(FileExistsError):
    """The output is already there; the caller must ask for it to be replaced."""
