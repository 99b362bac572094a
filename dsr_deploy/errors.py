"""Errors a user can fix: the CLI prints them as one line and exits non-zero, without a traceback."""


class UserError(Exception):
    """Bad input (a model spec, a file, a shape, an option). The message is the whole story, on one line."""

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(" ".join(str(message).split()))  # one line, always
        if exit_code is not None:
            self.exit_code = exit_code


def first_line(exc: BaseException, *, with_type: bool = False, limit: int = 300) -> str:
    """The first non-empty line of an exception's message (libraries print pages), at most ``limit`` characters;
    ``with_type``: as ``Type: line`` (``SystemExit: 0``, ``ValueError: bad``). The type's name when the message is
    empty. Every one-line error that quotes another library's exception goes through here."""
    line = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")[:limit]
    if not line:
        return type(exc).__name__
    return f"{type(exc).__name__}: {line}" if with_type else line


class MissingDependency(UserError):
    """An optional dependency is not installed; the message names the pip extra that brings it."""

    def __init__(self, module: str, extra: str, what: str = ""):
        what = f" for {what}" if what else ""
        super().__init__(f"{module} is not installed{what}; install it with: pip install 'dsr-deploy[{extra}]'")


def require(module: str, extra: str, what: str = ""):
    """Import an optional dependency lazily, or raise :class:`MissingDependency`."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(module, extra, what) from exc
