"""User-facing errors: each names the file or setting at fault and how to fix it."""


class XinceptError(Exception):
    """An error the user can fix; the CLIs print it without a traceback."""


class DataError(XinceptError):
    """A problem with a data folder, an image or a manifest."""


class WeightsError(XinceptError):
    """Backbone weights are missing, unreadable or do not match."""


class BundleError(XinceptError):
    """A model bundle is missing, incomplete or incompatible."""


class SettingError(XinceptError, ValueError):
    """A setting (command-line option or config value) is out of range."""
