"""Hugging Face Hub access that fails fast and clearly when the Hub cannot be reached.

Without ``HF_HUB_OFFLINE`` set, transformers and datasets retry an unreachable Hub for about a
minute before failing. ``check_hub`` probes the endpoint once (a few seconds at most) and, if it
is unreachable, switches the libraries to offline mode so that only local files and the cache are
used. ``hub_errors`` turns the libraries' errors into one message that says what to point where.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from urllib.parse import urlparse

from tunelab.errors import HubUnavailableError

log = logging.getLogger(__name__)

_TRUE = {"1", "true", "yes", "on"}


def offline_env() -> bool:
    """True when the user asked for offline mode through the usual variables."""
    return any(os.environ.get(v, "").lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


@cache
def hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connection attempt to the Hub endpoint (honours ``HF_ENDPOINT``)."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def set_offline() -> None:
    """Switch huggingface_hub, transformers and datasets to offline mode in this process."""
    import datasets
    from huggingface_hub import constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    datasets.config.HF_HUB_OFFLINE = True


def check_hub() -> bool:
    """Return whether the Hub is usable; if not, go offline so that loads fail in milliseconds."""
    if offline_env():
        set_offline()
        return False
    if hub_reachable():
        return True
    log.warning("Hugging Face Hub unreachable: using local files and the local cache only")
    set_offline()
    return False


def is_local(name_or_path: str) -> bool:
    return os.path.exists(os.path.expanduser(name_or_path))


def is_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


@contextmanager
def hub_errors(what: str, name: str, fix: str) -> Iterator[None]:
    """In offline mode, re-raise a failed fetch of ``what`` named ``name`` as one clear message."""
    try:
        yield
    except (OSError, ConnectionError) as err:
        if is_local(name) or not is_offline():
            raise
        raise HubUnavailableError(
            f"could not fetch {what} '{name}': the Hugging Face Hub is unreachable (or HF_HUB_OFFLINE=1) "
            f"and it is not in the local cache. {fix}"
        ) from err
