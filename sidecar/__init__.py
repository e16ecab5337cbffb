"""The log sidecar. gunicorn runs `sidecar:create_app()`; the app is built in sidecar/app.py.

This package's own import costs nothing beyond the standard library:
`sidecar.client` (the logging handler apps import) must work with neither
Flask nor the server's other dependencies installed, and gunicorn's master
imports `sidecar.settings` before it forks.
"""


def create_app(config=None):
    """Build the Flask app; see sidecar.app.create_app."""
    from .app import create_app as build
    return build(config)


def __getattr__(name):
    if name == "Sidecar":
        from .app import Sidecar
        return Sidecar
    raise AttributeError("module 'sidecar' has no attribute {!r}".format(name))
