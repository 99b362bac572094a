"""Errors a user can fix: the CLI prints them as one line and exits non-zero, without a traceback."""


class UserError(Exception):
    """Bad input (a model spec, a file, a shape, an option). The message is the whole story, on one line."""

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(" ".join(str(message).split()))  # one line, always
        if exit_code is not None:
            self.exit_code = exit_code


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
