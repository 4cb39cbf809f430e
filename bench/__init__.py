"""seabench: classifiers on frozen deep features and the feature-space augmentations that improve them."""

__version__ = "0.1.0"


class UserError(Exception):
    """Bad input from the user: the CLI prints the message (one sentence) and exits non-zero."""
