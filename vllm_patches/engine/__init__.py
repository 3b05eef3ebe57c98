"""Inside the engine: the compile-safe steering op over fixed buffers (``op``), the worker runtime
that installs it at model load and rewrites its buffers every step (``runtime``), steering slots
admitted as a scheduler resource (``admission``), and the patch bodies that hook those into vLLM's
model runners, input processor, config and workers (``patches``).

Runs in vLLM's processes (workers, engine core, front-end). May import ``patching``, ``frontend``,
``config`` and the hub core; nothing of ``llm``, ``preflight``, ``sweep``, ``endpoint`` or ``cli``.
"""
