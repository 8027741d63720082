"""Errors mmtok raises on bad input. Every message names what was checked, what was
expected and what was found, so a user never has to read a traceback from deep inside torch."""


class MmtokError(Exception):
    """Base class of every error mmtok raises on purpose."""


class ModalityError(MmtokError, TypeError):
    """A modality was built from data of the wrong shape, dtype or value."""


class CodecError(MmtokError, ValueError):
    """A codec was given a config, checkpoint or token stream it cannot use."""


class RegistryError(MmtokError, ValueError):
    """registry.yaml names something that does not resolve."""


class PluginError(MmtokError, RuntimeError):
    """A plugin could not be loaded or provided something invalid."""


def warn(message: str) -> None:
    """A recovery or a doubtful input mmtok went on with: one line on stderr, ``mmtok: warning: ...``."""
    import sys

    print(f"mmtok: warning: {message}", file=sys.stderr, flush=True)
