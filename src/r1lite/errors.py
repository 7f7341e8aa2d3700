"""Every error r1lite raises on purpose derives from R1liteError, and the CLI prints it as one line.

Each subclass names a concern; the message says what was wrong and what to do instead.
"""


class R1liteError(Exception):
    """A problem r1lite can explain in one line; anything else is a bug and keeps its traceback."""


class ConfigError(R1liteError, ValueError):
    """A recipe or command-line flag that r1lite cannot use."""


class DataError(R1liteError, ValueError):
    """A dataset that cannot be found, read or used."""


class ModelError(R1liteError, RuntimeError):
    """A model or adapter that cannot be found or loaded, or a device that lacks what a setting needs."""


class RewardError(R1liteError, RuntimeError):
    """A reward function that cannot be imported, or that raised; names the function and the completion."""


class EvalError(R1liteError, ValueError):
    """Evaluation or generation settings that cannot work."""


class ReportError(R1liteError, ValueError):
    """A run directory a report cannot be drawn from."""


class ExportError(R1liteError, RuntimeError):
    """r1lite export: no adapter to export, an output in the way, or the GGUF converter failing."""


class CompatError(R1liteError, RuntimeError):
    """An installed library version that r1lite's integration was not written for."""


class Interrupted(R1liteError):
    """Training stopped by SIGINT or SIGTERM after saving a checkpoint; exits with 128 + the signal's number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class DiskFull(R1liteError, OSError):
    """The disk filled up while a run was writing; the message says which checkpoint is still whole."""
