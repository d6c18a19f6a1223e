"""Project exceptions: each names the file, key or sequence at fault and what to do about it.

The CLI prints them without a traceback: exit code 2 for bad input, 1 for other failures.
"""


class NeurokError(Exception):
    """A failure the user can act on."""

    exit_code = 1


class BadInputError(NeurokError):
    """The input (a config, a file, a store) is malformed; `field` names the input field at fault where
    there is one (a service's answer names it)."""

    exit_code = 2

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class ConfigError(BadInputError):
    """A config file or a command-line override is wrong."""


class StoreError(BadInputError):
    """A 4D store is missing, malformed, locked or inconsistent."""


class StoreLockedError(StoreError):
    """Another writer holds the store."""


def require(ok: bool, key: str, value: object, rule: str) -> None:
    """A ConfigError naming the key, its value and the rule it breaks, unless ok (configs' __post_init__)."""
    if not ok:
        raise ConfigError(f"{key}={value}: {rule}")
