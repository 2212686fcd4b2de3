"""Queue names, segment paths and capacity strings."""
import os
import re
import secrets

from .errors import ArgumentError, ArgumentTypeError

SHM_DIR = "/dev/shm"
PREFIX = "shmq."
NAME_RULE = "1-200 characters of [A-Za-z0-9._-], not starting with '.'"
_NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}\Z")
ANON_MARK = "@"  # outside the name alphabet: anonymous segments never collide with names
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "t": 1000**4, "tb": 1000**4, "tib": 1024**4}


def check_name(name):
    """Return name if it is a valid queue name, else raise ArgumentError (a ValueError and a
    ShmqError) quoting the rule; ArgumentTypeError for a name that is not a str."""
    if not isinstance(name, str):
        raise ArgumentTypeError(f"queue name must be a str, not {type(name).__name__}")
    if not _NAME_RE.match(name):
        raise ArgumentError(f"invalid queue name {name!r}: names are {NAME_RULE}")
    return name


def path_of(name):
    return os.path.join(SHM_DIR, PREFIX + name)


def anonymous_name():
    return f"{ANON_MARK}{os.getpid()}-{secrets.token_hex(6)}"


def parse_size(value, what="capacity"):
    """Bytes from an int or a string such as '64MiB', '1.5GB', '4096'. Raises
    ArgumentTypeError/ArgumentError (TypeError/ValueError and ShmqError) naming what."""
    if isinstance(value, bool):
        raise ArgumentTypeError(f"{what} must be a number of bytes or a string like '64MiB'")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", value)
        if not m or m.group(2).lower() not in _UNITS:
            raise ArgumentError(f"{what} {value!r} is not a size: use bytes or a string like '64MiB', '512KiB', '1GB'")
        n = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    else:
        raise ArgumentTypeError(f"{what} must be a number of bytes or a string like '64MiB', not {type(value).__name__}")
    if n <= 0:
        raise ArgumentError(f"{what} must be positive, got {value!r}")
    return n
