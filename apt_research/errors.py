"""Every exception apt-research raises of its own, in one module at the bottom of the layers.

Any layer may raise or catch them without importing the layer that raises them (``cli`` catches what
``sweep`` raises; ``sweep`` raises what ``cli`` prints). Each is also importable where it is raised.
"""


class UsageError(Exception):
    """A problem with what the user asked for: printed as one line, exit code 2."""


class OwnershipError(ValueError):
    """A folder that apt-research did not make (or mark) was given for it to write into or read as its own."""


class UnsafePathError(OSError):
    """A path we would write, rename or delete goes through a symbolic link we did not make."""


class SpecError(ValueError):
    """A malformed sweep spec."""


class NotPlainData(ValueError):
    """A value that is not plain data, or a YAML document that holds one; the message names its key path."""


class ParameterError(ValueError):
    """A configuration that does not validate; the message names the key, the value and what was expected."""


class SweepLocked(RuntimeError):
    """Another sweep is writing to the same directory."""


class ClusterError(RuntimeError):
    """The Dask cluster cannot run the sweep: no scheduler answers, or its versions differ from the client's."""


class KernelKilled(RuntimeError):
    """A run's kernel process was ended by a signal (a native crash, or killed from outside)."""


class KernelCacheError(RuntimeError):
    """A kernel was called with argument types it was not compiled for, or the kernel cache is unusable."""
