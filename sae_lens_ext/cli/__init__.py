"""The ``reason-sae`` subcommands this adapter provides, one module each (``add_arguments(parser)``
and ``run(args)``, listed in ``reason_plugins.app.cli``): ``score``, ``train``, ``data``, ``dashboard``,
``contexts``, ``control``, ``diff``, plus ``view_args`` (the options the feature views share).

Thin: they check arguments before anything loads and call the rooms below. The top room: it may
import every other room of ``sae_lens_ext``; nothing imports it but the application layer.
"""
