"""Inside the engine: the compile-safe steering op over fixed buffers (``op``), the worker runtime
that installs it at model load and has its rooms rewrite its buffers every step (``runtime``, the
coordinator; ``steps``: layouts, edit tables and conditions; ``reads``: readout rows and the harvest
into the ``readout`` book; ``catalogue``: what each slot holds; ``records``: request numbers, reports,
failures), steering slots admitted as a scheduler resource (``admission``), and the patch bodies that
hook those into vLLM's model runners, input processor, config and workers (``patches``). The modules
import downwards only: patches > runtime > steps | reads | op > catalogue | records | admission | readout
(an import-linter contract).

Runs in vLLM's processes (workers, engine core, front-end). May import ``patching``, ``frontend``,
``config`` and the hub core; nothing of ``llm``, ``preflight``, ``sweep``, ``endpoint`` or ``cli``.
"""
