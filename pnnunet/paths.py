"""Where raw, preprocessed and results data live.

Only the CLI edge calls :func:`resolve_roots`; library code takes paths as arguments.
Environment variables: ``pnnunet_raw``, ``pnnunet_preprocessed``, ``pnnunet_results``. Unset
ones default to ``./pnnunet_data/{raw,preprocessed,results}`` under the current directory
(printed once by the CLI).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from pnnunet.errors import PnnunetError

ENV_NAMES = {"raw": "pnnunet_raw", "preprocessed": "pnnunet_preprocessed", "results": "pnnunet_results"}


@dataclass(frozen=True)
class Roots:
    raw: Path
    preprocessed: Path
    results: Path
    defaulted: tuple[str, ...] = ()  # names of roots that fell back to the default

    def describe_defaults(self) -> str | None:
        """One line naming the defaulted roots, or None if all came from the environment."""
        if not self.defaulted:
            return None
        parts = [f"{ENV_NAMES[k]}={getattr(self, k)}" for k in self.defaulted]
        return "environment variable(s) not set, using defaults: " + ", ".join(parts)


def resolve_roots(env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Roots:
    """Read the three roots from ``env`` (default ``os.environ``), defaulting under ``cwd``."""
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else Path(cwd)
    values, defaulted = {}, []
    for key, name in ENV_NAMES.items():
        if env.get(name):
            values[key] = Path(env[name]).expanduser().absolute()
        else:
            values[key] = cwd / "pnnunet_data" / key
            defaulted.append(key)
    return Roots(**values, defaulted=tuple(defaulted))


def env_flag(name: str, default: bool = False, env: Mapping[str, str] | None = None) -> bool:
    """The one parser of truthy environment strings (``1 true t yes y on``, case-insensitive)."""
    env = os.environ if env is None else env
    val = env.get(name)
    if val is None or val == "":
        return default
    return val.strip().lower() in ("1", "true", "t", "yes", "y", "on")


def env_int(name: str, default: int, env: Mapping[str, str] | None = None, minimum: int | None = 0) -> int:
    """The integer environment variable ``name`` (``default`` when unset or empty); a value that is not an
    integer, or is below ``minimum``, is a :class:`PnnunetError` naming the variable."""
    env = os.environ if env is None else env
    val = env.get(name)
    if val in (None, ""):
        return default
    try:
        out = int(val.strip())
    except ValueError:
        raise PnnunetError(f"environment variable {name}={val!r} is not an integer\n"
                           f"  fix: set it to a whole number (e.g. {name}={default}) or unset it") from None
    if minimum is not None and out < minimum:
        raise PnnunetError(f"environment variable {name}={val}: must be at least {minimum}\n"
                           f"  fix: set it to a whole number >= {minimum} or unset it")
    return out
