"""The extension points of reason-plugins, as pluggy hook specifications.

Every hook returns a mapping ``name -> object``; the plugin manager merges the answers of all
plugins and refuses a name registered twice (a silent override would change results unnoticed).
Implement any of them in a module marked with ``reason_plugins.hookimpl`` and expose the module
under the ``reason_plugins`` entry-point group of your distribution.
"""

from __future__ import annotations

import pluggy

PROJECT = "reason_plugins"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def reason_vocabularies() -> dict:
    """Reasoning vocabularies: ``name -> list of strings`` (grouped by ``lstrip().lower()``)
    or ``name -> {group: [strings]}``."""


@hookspec
def reason_feature_scorers() -> dict:
    """Feature scorers: ``name -> callable`` ranking SAE features (e.g. ``"reason_score"``)."""


@hookspec
def reason_steering_methods() -> dict:
    """Steering methods: ``name -> fn(x, sae, spec) -> x'`` (pure torch), where ``x`` holds residual-stream
    activations ``[..., d_in]`` at ``spec.hook``, ``sae`` is the SAELens SAE loaded for ``spec`` and ``spec`` is
    the request's ``reason_plugins.spec.SteeringSpec`` (its ``edits`` say which features change and how).
    Third-party methods run wherever steering is applied by hooks (HF models, lm-eval's HF path); the vLLM
    op runs the built-in methods only and refuses others at the front-end."""


@hookspec
def reason_activation_engines() -> dict:
    """Engines that run a model over token rows and report what an SAE reads there, for scores computed
    from what an inference engine saw: ``name -> factory(model, sae, sae_id, hook, **options) -> session``.
    A session has ``feature_sums(rows, masks, bits) -> (sums float64 [bits, d_sae], counts [bits])`` (every
    feature of SAELens's ``encode`` at ``hook``, summed over the positions of ``rows`` whose bit b is set in
    ``masks``), ``generate(prompts, n=, max_tokens=, temperature=, seed=) -> [[{"prompt_token_ids",
    "token_ids", "text"}] per prompt]`` and ``close()``. Options the callers add: ``cut_at=L`` when only the
    prefill up to decoder layer L is read (ReasonScore over given rows, harvests: an engine may load layers
    0..L only), ``raw_hooks`` with ``raw_rows(rows, hooks)`` for harvests. The vLLM adapter registers ``"vllm"``."""


@hookspec
def reason_sae_loaders() -> dict:
    """SAE loaders: ``name -> callable(path_or_release, sae_id, device) -> SAELens SAE``."""


@hookspec
def reason_model_configs() -> dict:
    """Model support: ``HF model name -> description of how to load it in TransformerLens``."""


@hookspec
def reason_training_configs() -> dict:
    """SAE training recipes: ``config name -> dict of SAELens runner-config fields``."""
