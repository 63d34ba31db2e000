"""Exception types raised for bad user input, mismatched specs and damaged stores."""


class RobolearnError(Exception):
    """Base class of every error robolearn raises on purpose."""


class SpecError(RobolearnError, ValueError):
    """A feature spec is malformed, or two specs do not fit each other."""


class FrameError(RobolearnError, ValueError):
    """A frame handed to a writer has a missing or unknown key, a wrong shape or dtype, or NaN."""


class StoreError(RobolearnError):
    """A path is not an episode store, or the store is damaged or in use."""


class EpisodeIndexError(StoreError, IndexError):
    """An episode index outside the store."""


class FormatVersionError(StoreError):
    """A store was written by a newer robolearn whose format this version cannot read."""


class WriterError(RobolearnError):
    """An episode writer was used out of order, or its background thread failed."""
