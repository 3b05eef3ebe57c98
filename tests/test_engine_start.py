"""Engines start on a machine in use and say why when they cannot (issue 30, item 1): the KV size a CPU engine
gets when its user chose none (``reason_plugins.engine_memory``), and ``vllm_patches.starting.start_llm``'s one
``EngineStartError`` / the CLI's one line naming the cause and the knob."""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from reason_plugins import engine_memory as em

GIB = 1 << 30
REPO = Path(__file__).resolve().parents[1]


def _model(tmp_path, **cfg) -> str:
    base = {"num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32, "hidden_size": 128,
            "max_position_embeddings": 1024, "torch_dtype": "float32"}
    (tmp_path / "config.json").write_text(json.dumps({**base, **cfg}))
    return str(tmp_path)


@pytest.fixture
def cpu_with(monkeypatch):
    """A CPU machine with the given (total, available) bytes and no VLLM_CPU_KVCACHE_SPACE."""
    monkeypatch.delenv(em.ENV_KNOB, raising=False)
    monkeypatch.setattr(em, "on_cpu", lambda: True)

    def set_memory(total: int, available: int):
        monkeypatch.setattr(em, "memory", lambda: (total, available))
    set_memory(24 * GIB, 16 * GIB)
    return set_memory


# -- kv_cache_kwargs ------------------------------------------------------------------------------
def test_kv_size_is_what_the_engine_needs_within_a_quarter_of_free_memory(tmp_path, cpu_with, capsys):
    model = _model(tmp_path)
    per_token = 2 * 4 * 2 * 32 * 4  # K and V, layers, kv heads, head_dim, float32
    assert em.token_bytes(json.loads((tmp_path / "config.json").read_text()), {}) == per_token
    assert em.kv_cache_kwargs(model, {"max_num_seqs": 3}) == {"kv_cache_memory_bytes": 6 * (1 << 20)}  # 3 x 1024 x 2 KiB
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("reason-plugins: KV cache 0.01 GiB") and em.ENV_KNOB in lines[0]
    # bfloat16 halves it; max_model_len from the kwargs wins over the config's
    assert em.kv_cache_kwargs(model, {"max_num_seqs": 4, "dtype": "bfloat16", "max_model_len": 512}) == {"kv_cache_memory_bytes": 2 << 20}
    # vLLM's default 256 sequences need 512 MiB; only 1 GiB free -> a quarter of it
    cpu_with(24 * GIB, GIB)
    assert em.kv_cache_kwargs(model, {}) == {"kv_cache_memory_bytes": GIB // 4}


def test_replicas_on_one_node_split_the_budget(tmp_path, cpu_with, capsys):
    model = _model(tmp_path)
    cpu_with(24 * GIB, GIB)
    one = em.kv_cache_kwargs(model, {}, replicas_per_node=1)["kv_cache_memory_bytes"]
    two = em.kv_cache_kwargs(model, {}, replicas_per_node=2)["kv_cache_memory_bytes"]
    assert (one, two) == (GIB // 4, GIB // 8)
    assert "/ 2 replicas" in capsys.readouterr().err.splitlines()[-1]


def test_one_max_length_sequence_always_fits(tmp_path, cpu_with, capsys):
    model = _model(tmp_path, max_position_embeddings=100_000)
    cpu_with(24 * GIB, 64 << 20)  # a quarter of 64 MiB is less than one sequence of 100k tokens (195 MiB)
    blocks = -(-100_000 // em.CPU_BLOCK_SIZE) + 1
    assert em.kv_cache_kwargs(model, {})["kv_cache_memory_bytes"] == -(-blocks * em.CPU_BLOCK_SIZE * 2048 // (1 << 20)) * (1 << 20)


def test_the_users_knobs_and_a_gpu_keep_vllms_own_sizing(tmp_path, cpu_with, monkeypatch, capsys):
    model = _model(tmp_path)
    assert em.kv_cache_kwargs(model, {"gpu_memory_utilization": 0.5}) == {}
    assert em.kv_cache_kwargs(model, {"kv_cache_memory_bytes": 1 << 30}) == {}
    monkeypatch.setenv(em.ENV_KNOB, "2")
    assert em.kv_cache_kwargs(model, {}) == {}
    monkeypatch.delenv(em.ENV_KNOB)
    monkeypatch.setattr(em, "on_cpu", lambda: False)
    assert em.kv_cache_kwargs(model, {}) == {}
    assert capsys.readouterr().err == ""  # nothing chosen, nothing said


def test_memory_problem_names_what_vllm_would_refuse_and_the_knob(cpu_with, monkeypatch):
    cpu_with(24 * GIB, 20 * GIB)
    assert "gpu_memory_utilization=0.92" in em.memory_problem({}) and em.ENV_KNOB in em.memory_problem({})
    assert em.memory_problem({"gpu_memory_utilization": 0.5}) is None
    assert em.memory_problem({"kv_cache_memory_bytes": GIB}) is None
    assert "kv_cache_memory_bytes=" in em.memory_problem({"kv_cache_memory_bytes": 30 * GIB})
    monkeypatch.setenv(em.ENV_KNOB, "40")
    assert f"{em.ENV_KNOB}=40" in em.memory_problem({"kv_cache_memory_bytes": GIB})  # the variable wins, as in vLLM


# -- start_llm's one error ----------------------------------------------------------------------------
def test_a_failed_start_is_its_root_cause_and_the_knob():
    from vllm_patches.starting import explain

    try:
        try:
            raise ValueError("Available memory on node 0 (1.00/23.54 GiB) on startup is less than desired CPU memory utilization")
        except ValueError as inner:
            raise RuntimeError("Engine core initialization failed. See root cause above.") from inner
    except RuntimeError as exc:
        in_process = explain(exc, [])
    assert in_process.startswith("the vLLM engine could not start: ValueError: Available memory on node 0")
    assert em.ENV_KNOB in in_process and "kv_cache_memory_bytes" in in_process
    # a child's filed cause wins over the parent's generic exception
    child = explain(RuntimeError("Engine core initialization failed. See root cause above."),
                    ["ValueError: To serve at least one request with the model's max seq len (4096)", "Exception: WorkerProc failed"])
    assert "max seq len (4096)" in child and "max_model_len" in child and "initialization failed" not in child


def test_the_log_filter_files_the_root_cause_and_keeps_the_traceback_off_the_terminal(tmp_path, monkeypatch):
    from vllm_patches import starting

    shown = []
    handler = logging.Handler()
    handler.emit = lambda record: shown.append(record.getMessage())
    second = logging.Handler()  # a record reaches every handler the logger has: its root cause is filed once
    second.emit = lambda record: shown.append(record.getMessage())
    vllm_logger = logging.getLogger("vllm")
    vllm_logger.addHandler(handler)
    vllm_logger.addHandler(second)
    try:
        starting.install_log_filter()
        path = tmp_path / "errors.jsonl"
        path.write_text("")
        monkeypatch.setenv(starting.ERRORS_ENV, str(path))
        monkeypatch.setenv(starting.PARENT_ENV, str(os.getpid()))
        monkeypatch.delenv(starting.DEBUG_ENV, raising=False)
        log = logging.getLogger("vllm.test_engine_start")
        try:
            try:
                raise KeyError("the root")
            except KeyError as root:
                raise RuntimeError("on top") from root
        except RuntimeError:
            log.exception("failed to start")
        log.error("no exception here")
        assert shown == ["no exception here"] * 2  # shown by both handlers; the failure by neither
        assert starting._read(str(path)) == ["KeyError: 'the root'"]
        monkeypatch.setenv(starting.DEBUG_ENV, "1")  # --debug: the record (and its traceback) is shown too
        try:
            raise ValueError("again")
        except ValueError:
            log.exception("failed to start")
        assert shown[-1] == "failed to start" and starting._read(str(path))[-1] == "ValueError: again"
        path.unlink()  # the start is over: later errors are left alone
        monkeypatch.delenv(starting.DEBUG_ENV)
        try:
            raise ValueError("later")
        except ValueError:
            log.exception("at run time")
        assert shown[-1] == "at run time"
    finally:
        vllm_logger.removeHandler(handler)
        vllm_logger.removeHandler(second)


def test_steered_vllm_starts_its_engine_through_start_llm(monkeypatch, llama_dir):
    from vllm_patches import starting

    seen = []

    def fake_start(model, **kwargs):
        seen.append((model, kwargs))
        raise starting.EngineStartError("stop here")

    monkeypatch.setattr(starting, "start_llm", fake_start)
    from lm_eval_tasks.steered_vllm import SteeredVLLM

    with pytest.raises(starting.EngineStartError, match="stop here"):
        SteeredVLLM(pretrained=str(llama_dir), dtype="float32", max_model_len=256, enforce_eager=True)
    assert seen and seen[0][0] == str(llama_dir) and seen[0][1]["max_model_len"] == 256
    import lm_eval.models.vllm_causallms as host
    import vllm

    assert host.LLM is vllm.LLM  # put back


def test_one_shot_commands_run_eagerly_unless_asked_to_compile(monkeypatch):
    from reason_plugins.app.cli import build_parser
    from reason_plugins.cli_args import enforce_eager

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # the user's choice is kept (and restored after the test)

    base = ["--model", "m", "--sae", "s", "--feature", "1", "--value", "2", "--prompt", "p"]
    assert enforce_eager(build_parser(["steer"]).parse_args(["steer", *base]))
    assert not enforce_eager(build_parser(["steer"]).parse_args(["steer", *base, "--compile"]))
    assert enforce_eager(build_parser(["steer"]).parse_args(["steer", *base, "--eager"]))
    with pytest.raises(SystemExit):
        build_parser(["steer"]).parse_args(["steer", *base, "--eager", "--compile"])
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING")
    enforce_eager(build_parser(["steer"]).parse_args(["steer", *base]))
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"  # unset: the engine core runs in the command's process
    for cmd in ("steer", "sweep", "score"):
        parser = build_parser([cmd])
        text = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[cmd].format_help()
        assert "--compile" in text and "--eager" in text and "benchmarks/RESULTS.md" in text


# -- real engines ----------------------------------------------------------------------------------
def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != em.ENV_KNOB}
    return {**env, "PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]), **extra}


HOLD_3_GIB = "import sys; b = bytearray(3 << 30); b[::4096] = b'x' * len(range(0, 3 << 30, 4096)); print('ready', flush=True); sys.stdin.read()"


@pytest.mark.slow
def test_steered_llm_starts_without_the_variable_while_3_gib_are_held(llama_dir, sae_dirs):
    script = textwrap.dedent(f"""
        from vllm import SamplingParams
        from vllm_patches.llm import SteeredLLM
        if __name__ == "__main__":
            llm = SteeredLLM({str(llama_dir)!r}, saes=[{{"sae": {str(sae_dirs["standard"])!r}, "hook": "blocks.2.hook_resid_post"}}],
                             dtype="float32", max_model_len=256, enforce_eager=True, seed=0)
            out = llm.generate(["What is 2 + 3?"], SamplingParams(max_tokens=4, temperature=0.0))
            print("TOKENS", len(out[0].outputs[0].token_ids))
    """)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_3_GIB], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                             env=_env(VLLM_ENABLE_V1_MULTIPROCESSING="0"))
    finally:
        holder.kill()
        holder.wait()
    assert res.returncode == 0, res.stderr[-3000:]
    assert "TOKENS 4" in res.stdout
    sized = [line for line in res.stderr.splitlines() if line.startswith("reason-plugins: KV cache")]
    assert len(sized) == 1, res.stderr[-3000:]


@pytest.mark.slow
def test_an_engine_that_cannot_start_is_one_line_from_the_cli(llama_dir, sae_dirs):
    cmd = [sys.executable, "-m", "reason_plugins.app.cli", "steer", "--model", str(llama_dir), "--sae", str(sae_dirs["standard"]),
           "--feature", "1", "--value", "2", "--prompt", "What is 2 + 3?", "--max-tokens", "2"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env(**{em.ENV_KNOB: "100000"}))
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("reason-sae steer: error: the vLLM engine cannot start"), res.stderr[-2000:]
    assert f"{em.ENV_KNOB}=100000" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
def test_an_engine_that_cannot_start_is_one_engine_start_error_from_python(llama_dir, sae_dirs, monkeypatch):
    from vllm_patches.llm import SteeredLLM
    from vllm_patches.starting import EngineStartError

    # vLLM's 0.92 of all memory made impossible (0.9999 here): refused before the engine starts
    monkeypatch.delenv(em.ENV_KNOB, raising=False)
    saes = [{"sae": str(sae_dirs["standard"]), "hook": "blocks.2.hook_resid_post"}]
    with pytest.raises(EngineStartError, match="gpu_memory_utilization=0.9999 of all memory.*VLLM_CPU_KVCACHE_SPACE"):
        SteeredLLM(str(llama_dir), saes=saes, gpu_memory_utilization=0.9999)
    # a KV cache too small for one sequence: refused inside the engine core process (multiprocessing on, as a user
    # runs it); the exception is the child's root cause, and no traceback reaches the terminal
    script = textwrap.dedent(f"""
        from vllm_patches.llm import SteeredLLM
        from vllm_patches.starting import EngineStartError
        if __name__ == "__main__":
            try:
                SteeredLLM({str(llama_dir)!r}, saes={saes!r}, dtype="float32", enforce_eager=True, kv_cache_memory_bytes=1 << 20)
            except EngineStartError as exc:
                print("ERROR", exc)
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                         env=_env(VLLM_ENABLE_V1_MULTIPROCESSING="1"))
    assert res.returncode == 0, res.stderr[-3000:]
    line = next(line for line in res.stdout.splitlines() if line.startswith("ERROR"))
    assert "ValueError: To serve at least one request with the model's max seq len (4096)" in line and "max_model_len" in line
    assert "Traceback" not in res.stderr, res.stderr[-3000:]


def test_a_steered_engine_built_from_engine_args_gets_the_size_vllm_serve_included(llama_dir, monkeypatch, capsys):
    """What ``vllm serve`` runs: ``EngineArgs.create_engine_config`` (patched) sizes a steered CPU engine's KV cache
    when the operator set no knob, and leaves unsteered engines and the operator's choices alone."""
    import vllm_patches

    vllm_patches.register()
    from vllm.engine.arg_utils import EngineArgs

    monkeypatch.delenv(em.ENV_KNOB, raising=False)
    steering = {"reason_steering": {"saes": [{"sae": "unused", "hook": "blocks.2.hook_resid_post"}]}}

    def kv(**kwargs):
        args = EngineArgs(model=str(llama_dir), dtype="float32", max_model_len=256, max_num_seqs=4, **kwargs)
        return args.create_engine_config().cache_config.kv_cache_memory_bytes

    assert kv(additional_config=steering) == 2 << 20  # 4 x 256 x 2 KiB = 2 MiB
    assert [line for line in capsys.readouterr().err.splitlines() if line.startswith("reason-plugins: KV cache")]
    assert kv() is None  # no steering config: vLLM's own behaviour
    assert kv(additional_config=steering, gpu_memory_utilization=0.5) is None
    assert kv(additional_config=steering, kv_cache_memory_bytes=3 << 20) == 3 << 20
