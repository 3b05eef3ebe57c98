"""reason-plugins hub: pluggy hookspecs, the plugin manager, the SteeringSpec contract, the CLI and
the embedded demo. Importing this package imports nothing but ``import_hooks`` (our ``.pth`` imports both in every
Python start of the environment), so the public names below load on first use (``import_hooks.lazy_face``)."""

from reason_plugins.import_hooks import lazy_face

__version__ = "0.1.0"
_FACE = {"hookimpl": "reason_plugins.hookspecs", **{name: "reason_plugins.manager" for name in
                                                   ("PluginError", "UnknownNameError", "get", "get_plugin_manager", "registry")}}
__all__ = [*_FACE, "__version__"]
__getattr__, __dir__ = lazy_face(__name__, _FACE)
