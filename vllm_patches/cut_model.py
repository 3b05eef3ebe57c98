"""An engine cut at the deepest hook: a copy of a local HF checkpoint with decoder layers 0..L only, for
work that needs the prefill up to layer L and nothing after it (harvests over given rows, and
``reason-sae score --engine vllm`` over given rows: ``cut_at`` of ``onpolicy.VllmSession``).

vLLM builds the layers the config names (``num_hidden_layers``) and refuses weights of layers it did
not build, so an override of the layer count alone cannot load a full checkpoint; this writes the
first L+1 layers' tensors (plus the embedding, final norm and head, which a prefill-only read never
looks at but the model class needs) beside a config saying L+1 layers. The residual rows at
``blocks.L.hook_resid_post`` are computed exactly as in the full model: nothing before layer L+1
depends on later layers. The copy is cached under the project's cache by the source's identity and L.
A hub name is read from the local HF cache (``snapshot_download``: offline, the cached snapshot); a cut
after the last layer is the model itself, returned as given.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def _identity(src: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(src.iterdir()):
        if path.is_file():
            stat = path.stat()
            h.update(f"{path.name}:{stat.st_size}:{int(stat.st_mtime)}".encode())
    return h.hexdigest()[:16]


# what a cut copies of a hub snapshot: config, tokenizer and chat template files, the weights
_HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken", "*.py"]


def _hub_file(model: str, name: str) -> Path:
    from huggingface_hub import hf_hub_download, snapshot_download

    try:
        if name:
            return Path(hf_hub_download(model, name))
        return Path(snapshot_download(model, allow_patterns=_HUB_FILES))
    except Exception as exc:  # not a local folder, not a hub name in the cache (offline) or on the hub
        raise ValueError(f"cannot cut {model!r}: no local folder and no hub snapshot of it "
                         f"({' '.join(str(exc).split())[:160]})") from None


def cut_model(model_dir: str | Path, last_layer: int, cache: str | Path | None = None) -> str | Path:
    """The folder of ``model_dir`` (a local folder or a hub name) cut after decoder layer ``last_layer`` (built
    once, then reused); ``model_dir`` itself when ``last_layer`` is its last layer."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from reason_plugins.models import cache_dir
    from reason_plugins.tiny_models import atomic_dir

    local = Path(model_dir).is_dir()
    config = json.loads((Path(model_dir) / "config.json" if local else _hub_file(str(model_dir), "config.json")).read_text())
    layers = int(config.get("num_hidden_layers") or config["text_config"]["num_hidden_layers"])
    if not 0 <= last_layer < layers:
        raise ValueError(f"cannot cut {str(model_dir)!r} after layer {last_layer}: it has {layers} layers (0..{layers - 1})")
    if last_layer == layers - 1:
        return model_dir
    src = Path(model_dir) if local else _hub_file(str(model_dir), "")
    shards = sorted(src.glob("*.safetensors"))
    if not shards:
        raise ValueError(f"cannot cut {str(model_dir)!r}: no .safetensors weights there")
    name = src.name if local else str(model_dir).replace("/", "--")
    out = Path(cache or cache_dir() / "cut") / f"{name}-{_identity(src)}-L{last_layer}"

    def build(tmp: Path) -> None:
        for path in src.iterdir():
            if path.is_file() and path.suffix != ".safetensors" and not path.name.endswith(".safetensors.index.json"):
                shutil.copy2(path, tmp / path.name)
        cut = dict(config, num_hidden_layers=last_layer + 1)
        for key in ("layer_types", "mlp_only_layers"):  # per-layer lists some configs carry
            if isinstance(cut.get(key), list):
                cut[key] = cut[key][:last_layer + 1]
        (tmp / "config.json").write_text(json.dumps(cut, indent=2))
        kept = {}
        for shard in shards:  # only the kept tensors are read
            with safe_open(str(shard), framework="pt") as f:
                for name in f.keys():
                    m = _LAYER.search(name)
                    if m is None or int(m.group(1)) <= last_layer:
                        kept[name] = f.get_tensor(name)
        save_file(kept, str(tmp / "model.safetensors"), metadata={"format": "pt"})

    return atomic_dir(out, build)
