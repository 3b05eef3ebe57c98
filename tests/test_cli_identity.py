"""A ReasonScore run is identified by what it computes: shards of different SAEs are not merged, a
checkpoint of another run is not resumed (the difference is named; ``--overwrite`` starts over
and then equals a clean run), the same run resumes and says so, and ``--scores RUN`` reopens runs
written from paths and from in-memory rows + an in-memory SAE."""

from __future__ import annotations

import json

import pytest
import torch

from reason_plugins.app.cli import main
from sae_lens_ext.reason_score.outputs import score_to_dir
from sae_lens_ext.reason_score.run import compute_reason_score


@pytest.fixture(scope="module")
def other_sae(sae_dirs, tmp_path_factory):
    """The standard fixture SAE with slightly perturbed encoder weights: same class, same shape."""
    from sae_lens import SAE

    sae = SAE.load_from_disk(str(sae_dirs["standard"]))
    with torch.no_grad():
        sae.W_enc.add_(0.05)
    path = tmp_path_factory.mktemp("other_sae") / "sae"
    sae.save_model(str(path))
    return path


@pytest.fixture(scope="module")
def rows(tokenizer):
    from reason_plugins.tiny_models import training_texts

    ids = tokenizer(" ".join(training_texts(tokenizer, 12, seed=3)), add_special_tokens=False)["input_ids"]
    return torch.tensor(ids[: 6 * 64]).reshape(6, 64)


def errors(err: str) -> list[str]:
    """Our error lines (model-loading progress bars also write to stderr)."""
    return [line for line in err.replace("\r", "\n").splitlines() if line.startswith("reason-sae")]


def base(llama_dir, sae, data):
    return ["score", "--model", str(llama_dir), "--sae", str(sae), "--dataset", str(data), "--n-samples", "6",
            "--batch-size", "2", "--top-k", "5", "--no-progress"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, rows):
    from datasets import Dataset

    path = tmp_path_factory.mktemp("id_data") / "rows"
    Dataset.from_dict({"tokens": rows.tolist()}).save_to_disk(str(path))
    return path


def test_merge_refuses_shards_of_different_saes(llama_dir, sae_dirs, other_sae, data_dir, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(base(llama_dir, sae_dirs["standard"], data_dir) + ["--out", str(a), "--num-chunks", "2", "--chunk-index", "0"]) == 0
    assert main(base(llama_dir, other_sae, data_dir) + ["--out", str(b), "--num-chunks", "2", "--chunk-index", "1"]) == 0
    capsys.readouterr()
    assert main(["score", "--merge", str(a), str(b), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(errors(err)) == 1, err
    err = errors(err)[0]
    assert err.startswith("reason-sae score: error: shards") and "different runs (sae:" in err
    assert not (tmp_path / "m").exists()


def test_resume_refuses_another_sae_and_overwrite_equals_clean(llama_dir, sae_dirs, other_sae, data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        score_to_dir(str(llama_dir), str(sae_dirs["standard"]), str(data_dir), out, n_samples=6, batch_size=2,
                        seed=42, ignore_tokens=["bos", "eos"], progress=False, checkpoint_every=1, _interrupt_after=1)
    assert (out / "checkpoint.safetensors").is_file()
    capsys.readouterr()
    argv = base(llama_dir, other_sae, data_dir) + ["--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(errors(err)) == 1, err
    err = errors(err)[0]
    assert "checkpoint" in err and "different run (sae:" in err and "--overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.safetensors"]  # left as it was
    assert main(argv + ["--overwrite"]) == 0
    clean = tmp_path / "clean"
    assert main(base(llama_dir, other_sae, data_dir) + ["--out", str(clean)]) == 0
    from safetensors.torch import load_file

    got, want = load_file(out / "scores.safetensors"), load_file(clean / "scores.safetensors")
    assert torch.equal(got["mu_groups"], want["mu_groups"]) and torch.equal(got["scores"], want["scores"])
    # a finished run of another SAE in --out is refused too
    capsys.readouterr()
    assert main(base(llama_dir, sae_dirs["standard"], data_dir) + ["--out", str(clean)]) == 2
    assert "finished run" in capsys.readouterr().err


def test_same_run_resumes_and_says_so(llama_dir, sae_dirs, data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        score_to_dir(str(llama_dir), str(sae_dirs["standard"]), str(data_dir), out, n_samples=6, batch_size=2,
                        seed=42, ignore_tokens=["bos", "eos"], progress=False, checkpoint_every=1, _interrupt_after=1, top_k=5)
    capsys.readouterr()
    assert main(base(llama_dir, sae_dirs["standard"], data_dir) + ["--out", str(out)]) == 0
    assert "resuming from batch 1/3" in capsys.readouterr().err
    clean = tmp_path / "clean"
    assert main(base(llama_dir, sae_dirs["standard"], data_dir) + ["--out", str(clean)]) == 0
    from safetensors.torch import load_file

    assert torch.allclose(load_file(out / "scores.safetensors")["scores"], load_file(clean / "scores.safetensors")["scores"],
                          rtol=1e-12, atol=0)


def test_scores_alone_reopens_runs_from_paths_and_from_memory(llama_dir, sae_dirs, data_dir, rows, tmp_path, capsys):
    from sae_lens import SAE

    from_paths = tmp_path / "paths"
    assert main(base(llama_dir, sae_dirs["standard"], data_dir) + ["--out", str(from_paths)]) == 0
    cfg = json.loads((from_paths / "run_config.json").read_text())
    assert cfg["model"] == str(llama_dir) and cfg["sae"] == str(sae_dirs["standard"].resolve()) and cfg["data"] == str(data_dir)
    in_memory = tmp_path / "memory"
    sae = SAE.load_from_disk(str(sae_dirs["standard"]))  # an object with no path we know of
    score_to_dir(str(llama_dir), sae, rows, in_memory, top_k=5, progress=False, batch_size=2)
    cfg = json.loads((in_memory / "run_config.json").read_text())
    assert cfg["data"] == str((in_memory / "data").resolve()) and cfg["sae"] == str((in_memory / "sae").resolve())
    for run in (from_paths, in_memory):
        capsys.readouterr()
        assert main(["contexts", "--scores", str(run), "--top-k", "2", "--n", "2", "--n-samples", "4", "--out",
                     str(run / "ctx"), "--no-progress"]) == 0, capsys.readouterr().err
        assert (run / "ctx" / "contexts.jsonl").is_file()
    # the saved rows are the rows that were scored: rescoring them from the run dir gives the same numbers
    again = compute_reason_score(str(llama_dir), str(in_memory / "sae"), str(in_memory / "data"), progress=False, batch_size=2)
    first = compute_reason_score(str(llama_dir), sae, rows, progress=False, batch_size=2)
    assert torch.allclose(again.scores, first.scores, rtol=1e-12, atol=0)
