"""Looking at features of a scored run: reopening it (``scored_run``), streaming chosen features
(``feature_activations``), top contexts (``contexts``, ``context_pages``, ``context_stats``), the
token-driven control (``token_control``, ``control_stats``), model / data diffing (``model_diff``,
``diff_stats``), SAEDashboard pages (``dashboards``, ``dashboard_assets``, ``dashboard_index``,
``headless_browser``) and figures (``plots``).

The ``*_stats`` modules are host-free math (tested on hand-made tensors). May import
``reason_score``, ``loading``, ``inputs`` and the hub core; nothing of ``training`` or ``cli``.
"""
