"""The README's code examples, read and run as a user would run them (``tests/test_readme.py``).

Every code example in README.md is a fenced block with a language. ``python`` and ``bash`` blocks run;
``text``, ``json``, ``toml`` and ``mermaid`` blocks only describe (grammars, shapes, config files). After
the language the fence carries the runner's directives, which GitHub does not show:

- ``session=NAME``: the blocks of one session run in README order in one shared working directory
  (a fresh temp dir holding the world's input files, and links to the checkout's ``scripts/`` and
  ``benchmarks/``) and one environment (the fake hub of
  ``readme_world``, offline); each maximal run of consecutive python blocks of a session (blocks of
  other sessions and descriptive blocks in between do not count) is executed as ONE script, so what
  one block defines (``llm``, ``spec``) is there in the next; consecutive bash blocks likewise make one
  ``bash -e`` script (a shell variable set in one is there in the next).
- ``serve`` (bash only): the block runs in the background, started before the session's other blocks,
  until ``/health`` answers (bounded wait); it is stopped when the session ends.

``SUBSTITUTIONS`` is all the runner changes in the text before running it: names that need hub
datasets, sizes that would take hours on 2 cores, cluster addresses and shapes, a port. Everything
else runs as written. A fast test fails when an entry no longer matches its session's text.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
RUNNABLE = ("python", "bash")
DESCRIPTIVE = ("text", "json", "toml", "mermaid")
DIRECTIVES = ("session", "serve")


@dataclass(frozen=True)
class Sub:
    """Replace ``old`` by ``new`` in the blocks of ``session``; ``new`` may name ``{port}`` (the server's
    free port) or ``{think_end}`` (the tiny tokenizer's ``</think>`` id). ``why``: the reason."""
    session: str
    old: str
    new: str
    why: str


# a recipe's sizes that train in seconds on the fake world's 4 rows (the recipes' own are 819.2M tokens on a GPU)
_SMALL_TRAINING = ("--override training_tokens=2048 --override train_batch_size_tokens=512 --override device=cpu "
                   "--override sae.d_in=128 --override n_batches_in_buffer=2 --override store_batch_size_prompts=2 "
                   "--override n_batches_for_norm_estimate=2")

SUBSTITUTIONS = (
    Sub("train", "--override dataset_path=data/llama8b/mixed-tokenized", "--override dataset_path=data/llama8b/mixed-tokenized "
        + _SMALL_TRAINING, "size (and the fake model's width, 128)"),
    Sub("train", "--override sae.k=64 --out", "--override sae.k=64 --override dataset_path=data/llama8b/mixed-tokenized "
        + _SMALL_TRAINING + " --out", "the recipe's dataset is a hub dataset: the one `reason-sae data` made above; size"),
    Sub("train", "--cached-activations acts/llama8b --out", "--cached-activations acts/llama8b " + _SMALL_TRAINING + " --out",
        "size (and the fake model's width, 128)"),
    Sub("train", "--sizes 32768,65536", "--sizes 256,512", "size (the fake model is 128 wide)"),
    Sub("train", "--max-tokens 4096 --temperature 0.6", "--max-tokens 32 --temperature 0.6 --context-size 64",
        "size: 2 problems x 4 continuations of 32 tokens fill 4 rows of 64"),
    Sub("loading", '"/models/r1-qwen-1.5b"', '"r1-qwen-1.5b"', "a local snapshot: the world's copy of that model"),
    Sub("score", "--top-k 100", "--top-k 3", "size: 3 dashboard pages, not 100"),
    Sub("score", "--top-k 20", "--top-k 3", "size: contexts and token control of 3 features"),
    Sub("steer", "max_tokens=4096", "max_tokens=32", "size"),
    Sub("steer", "max_tokens=256", "max_tokens=32", "size"),
    Sub("steer", "torch.randn(4096)", "torch.randn(128)", "the fake model's width"),
    Sub("server", "--served-model-name r1", "--served-model-name r1 --host 127.0.0.1 --port {port} --enforce-eager",
        "loopback only, a free port (the machine is shared); eager: no compile on 2 cores"),
    Sub("server", "127.0.0.1:8000", "127.0.0.1:{port}", "the server's free port"),
    Sub("lmeval", "--tasks aime2024_nofigures,math500,gpqa_diamond_openai", "--tasks champ --limit 2",
        "the three benchmarks are hub datasets: the offline CHAMP task, 2 problems"),
    Sub("lmeval", "--tasks aime2024_nofigures --include_path", "--tasks champ --limit 2 --include_path", "the same"),
    Sub("lmeval", "--apply_chat_template --log_samples --output_path runs/",
        "--gen_kwargs max_gen_toks=16 --apply_chat_template --log_samples --output_path runs/", "size: 16 tokens, not 512"),
    Sub("lmeval", "max_gen_toks=32768,cutoff_token=128014", "max_gen_toks=16,cutoff_token={think_end}",
        "size; R1-Llama's </think> id is the tiny tokenizer's"),
    Sub("lmeval", "dtype=bfloat16", "dtype=bfloat16,enforce_eager=True", "eager: no compile on 2 cores"),
    Sub("lmeval", '"dtype": "bfloat16"', '"dtype": "bfloat16", "enforce_eager": true', "the same"),
    Sub("ray", "data_parallel_size=4,tensor_parallel_size=2", "data_parallel_size=2,tensor_parallel_size=1,enforce_eager=True",
        "2 cores: 2 replicas of 1 CPU each; eager"),
    Sub("ray", "--tasks aime2024_nofigures --include_path", "--tasks champ --limit 2 --gen_kwargs max_gen_toks=16 --include_path",
        "a hub benchmark: the offline CHAMP task, 2 problems, 16 tokens"),
    Sub("ray", " --ray 10.0.0.1:6379 --workers 8", "",
        "a cluster's address: run as `--ray local` it was the next line's run again (`--ray` alone means local); "
        "without Ray it is the one-process reference that run is held to (readme_checks: 1e-12, same top-20 and counts)"),
    Sub("ray", "replicas=4,", "replicas=1, enforce_eager=True,", "one engine at a time on 2 cores; eager"),
    Sub("ray", '"max_tokens": 1024', '"max_tokens": 16', "size"),
    Sub("onpolicy", "--tensor-parallel-size 2", "--tensor-parallel-size 1", "2 cores: one engine process, not two ranks"),
    Sub("onpolicy", '{"tensor_parallel_size": 2}', '{"tensor_parallel_size": 1, "enforce_eager": True}',
        "2 cores; eager: compiling costs more than these few rows"),
    Sub("onpolicy", "--max-tokens 4096", "--max-tokens 64", "size: 8 generations of 64 tokens make 2 rows"),
)


# names the fake hub does not hold (hub datasets): none may be left in a step after substitution
HUB_ONLY = ("aime2024_nofigures", "math500", "gpqa_diamond_openai", "lmsys/lmsys-chat-1m", "open-thoughts/OpenThoughts-114k")


@dataclass
class Block:
    lang: str
    line: int  # 1-based line of the opening fence
    code: str
    directives: dict = field(default_factory=dict)

    @property
    def session(self) -> str | None:
        return self.directives.get("session")


def parse_info(info: str) -> tuple[str, dict]:
    """``"python session=steer"`` -> ``("python", {"session": "steer"})``; a bare word is a flag."""
    lang, *rest = info.split() or [""]
    directives = {}
    for word in rest:
        key, _, value = word.partition("=")
        directives[key] = value if value else True
    return lang, directives


def _tokens(text: str):
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark").parse(text)


def blocks(text: str | None = None) -> list[Block]:
    """Every fenced code block of the README, in order."""
    text = README.read_text() if text is None else text
    out = []
    for tok in _tokens(text):
        if tok.type == "fence":
            lang, directives = parse_info(tok.info)
            out.append(Block(lang, tok.map[0] + 1, tok.content, directives))
    return out


def indented_blocks(text: str | None = None) -> list[int]:
    """Lines (1-based) where an indented code block starts: each should be a fenced block."""
    text = README.read_text() if text is None else text
    return [tok.map[0] + 1 for tok in _tokens(text) if tok.type == "code_block"]


def sessions(all_blocks: list[Block] | None = None) -> dict[str, list[Block]]:
    out: dict[str, list[Block]] = {}
    for b in blocks() if all_blocks is None else all_blocks:
        if b.lang in RUNNABLE and b.session:
            out.setdefault(b.session, []).append(b)
    return out


@dataclass
class Step:
    kind: str  # "python" | "bash" | "serve"
    code: str
    lines: list[int]


def steps(session_blocks: list[Block]) -> list[Step]:
    """The session's scripts in the order they run: a ``serve`` block first, then each maximal run of
    consecutive blocks of one language joined into one script (a python script, or a bash script as
    typed into one terminal: a variable set in one block is there in the next)."""
    out: list[Step] = [Step("serve", b.code, [b.line]) for b in session_blocks if b.directives.get("serve")]
    for b in session_blocks:
        if b.directives.get("serve"):
            continue
        if out and out[-1].kind == b.lang:
            out[-1].code += f"\n# README.md line {b.line}\n" + b.code
            out[-1].lines.append(b.line)
        else:
            out.append(Step(b.lang, f"# README.md line {b.line}\n" + b.code, [b.line]))
    return out


def substitute(name: str, code: str, values: dict, used: set) -> str:
    for i, sub in enumerate(SUBSTITUTIONS):
        if sub.session == name and sub.old in code:
            new = sub.new
            for key, value in values.items():
                new = new.replace("{" + key + "}", str(value))
            code = code.replace(sub.old, new)
            used.add(i)
    return code


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def think_end_id(world: Path) -> int:
    """The ``</think>`` id of the fake R1 model's tokenizer."""
    import json

    from tests.support.readme_world import LLAMA_8B, REVISION

    snap = world / "hf" / "hub" / f"models--{LLAMA_8B.replace('/', '--')}" / "snapshots" / REVISION
    added = json.loads((snap / "tokenizer.json").read_text())["added_tokens"]
    return next(t["id"] for t in added if t["content"] == "</think>")


def session_env(world: Path, extra: dict | None = None) -> dict:
    from tests.support.readme_world import world_env

    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, **world_env(world), "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}", "PYTHONPATH": str(ROOT),
           "VLLM_CPU_KVCACHE_SPACE": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1",
           # engines of scripts and one-shot commands run their core in their own process, as in the other tests
           # (~20 s less each; not the server: its multi-process path is the one users run)
           "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    env.pop("VIRTUAL_ENV", None)
    return {**env, **(extra or {})}


def _wait_health(proc: subprocess.Popen, port: int, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode} before /health answered:\n{log.read_text()[-6000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise AssertionError(f"/health did not answer within {timeout:.0f} s:\n{log.read_text()[-6000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


# sessions whose every step runs through a wrapper: Ray only inside a loopback-only namespace
WRAP = {"ray": [str(ROOT / "scripts" / "in_netns.sh"), sys.executable, str(ROOT / "tests" / "support" / "readme_ray.py")]}


def _children_cpu() -> float:
    import resource

    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    return use.ru_utime + use.ru_stime


def run_session(name: str, world: Path, workdir: Path, *, timeout: float = 1200, values: dict | None = None,
                used: set | None = None, wrap: list[str] | None = None, env: dict | None = None) -> list[tuple[str, float, float]]:
    """Run the session's steps in ``workdir``; returns (step, wall seconds, CPU seconds of the finished
    child processes) per step (a server's CPU is not counted: it has not finished). A failing step fails
    with its README line, its code as run and the tail of its output. ``wrap``: a command prefix for
    every step (the Ray session runs inside a loopback-only namespace)."""
    import shutil

    for f in (world / "inputs").iterdir():
        (shutil.copytree if f.is_dir() else shutil.copy)(f, workdir / f.name)
    for d in ("scripts", "benchmarks"):  # commands that name a checkout's files run as from its root
        (workdir / d).symlink_to(ROOT / d)
    used = set() if used is None else used
    values = {"port": free_port(), "think_end": think_end_id(world), **(values or {})}
    wrap = WRAP.get(name, []) if wrap is None else wrap
    env = session_env(world, env)
    assert env["HF_HUB_OFFLINE"] == "1", "the README sessions run offline"
    timings, server = [], None
    try:
        for step in steps(sessions()[name]):
            code = substitute(name, step.code, values, used)
            left = [n for n in HUB_ONLY if n in code]
            assert not left, f"README.md line(s) {step.lines} ({name}) would reach the hub for {left}: add a substitution"
            suffix = ".py" if step.kind == "python" else ".sh"
            script = Path(tempfile.mkstemp(suffix=suffix, dir=workdir, prefix=f"readme_{step.lines[0]}_")[1])
            script.write_text(code)
            argv = [sys.executable, str(script)] if step.kind == "python" else ["bash", "-eo", "pipefail", str(script)]
            argv = [*(wrap or []), *argv]
            started, cpu = time.monotonic(), _children_cpu()
            if step.kind == "serve":
                log = workdir / "server.log"
                server = subprocess.Popen(argv, cwd=workdir, env={**env, "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                          start_new_session=True)
                _wait_health(server, values["port"], timeout, log)
            else:
                log = script.with_suffix(".log")  # stdout and stderr as they come: a slow step can be watched
                with log.open("w") as out:
                    rc = subprocess.run(argv, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout).returncode
                assert rc == 0, f"README.md line(s) {step.lines} ({name}) exited {rc}\n--- ran:\n{code}\n--- output:\n{log.read_text()[-8000:]}"
            timings.append((f"{step.kind}@{step.lines[0]}", round(time.monotonic() - started, 1), round(_children_cpu() - cpu, 1)))
    finally:
        if server is not None:
            _stop(server)
    return timings


def used_in_text(all_blocks: list[Block] | None = None) -> list[Sub]:
    """The entries of SUBSTITUTIONS whose text no block of their session holds (stale entries)."""
    by_session = sessions(all_blocks)
    return [s for s in SUBSTITUTIONS if not any(s.old in b.code for b in by_session.get(s.session, []))]


def fence_problems(text: str | None = None) -> list[str]:
    """What breaks the README's rules for examples, one line each (empty when none)."""
    problems = [f"line {n}: indented code block (fence it with a language)" for n in indented_blocks(text)]
    for b in blocks(text):
        if b.lang not in RUNNABLE + DESCRIPTIVE:
            problems.append(f"line {b.line}: fence language {b.lang!r} (expected one of {RUNNABLE + DESCRIPTIVE})")
        unknown = set(b.directives) - set(DIRECTIVES)
        if unknown:
            problems.append(f"line {b.line}: unknown directive(s) {sorted(unknown)} (known: {DIRECTIVES})")
        if b.lang in RUNNABLE and not b.session:
            problems.append(f"line {b.line}: a {b.lang} block without session=NAME")
        if b.lang in DESCRIPTIVE and b.directives:
            problems.append(f"line {b.line}: directives on a {b.lang} block, which never runs")
        if b.directives.get("serve") and b.lang != "bash":
            problems.append(f"line {b.line}: serve on a {b.lang} block (bash only)")
    return problems

