"""Errors that tunelab reports to the user as one clear message, without a traceback."""

from collections.abc import Iterator
from contextlib import contextmanager


class TunelabError(Exception):
    """Base class: a problem with the user's configuration, data or environment."""


class ConfigError(TunelabError):
    """A config key has a value that cannot work."""


class DataError(TunelabError):
    """The input data is missing, empty or malformed."""


class HubUnavailableError(TunelabError):
    """A model or dataset could not be fetched from the Hugging Face Hub nor found locally."""


def find_tunelab_error(err: BaseException) -> TunelabError | None:
    """The TunelabError behind ``err`` (libraries such as Hydra and datasets wrap exceptions)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, TunelabError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def unwrap(err: BaseException) -> BaseException:
    """``err``'s TunelabError cause if it has one, else ``err`` itself."""
    return find_tunelab_error(err) or err


@contextmanager
def unwrapped_errors() -> Iterator[None]:
    """Re-raise a TunelabError that Hydra's instantiate (or a library) wrapped, as itself."""
    try:
        yield
    except Exception as err:
        cause = find_tunelab_error(err)
        if cause is None or cause is err:
            raise
        raise cause from err
