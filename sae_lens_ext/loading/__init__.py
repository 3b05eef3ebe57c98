"""How names become models and SAEs inside the hosts, without forking them: DeepSeek-R1-Distill
configs in TransformerLens (``deepseek``), our pretrained releases in SAELens (``releases``), the
sparsify k-SAE loader (``sparsify``), and the registration table that arms those at interpreter
start (``autoload``, imported by our ``.pth``).

A bottom room beside ``inputs``: it imports nothing else of ``sae_lens_ext``. ``autoload`` names the
registering modules only as strings, so it sits below them: they import it to arm themselves.
"""
