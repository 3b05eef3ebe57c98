"""Fixtures built once per run (``tests/support/shared_build.py``): two processes asking for the same pieces at
once build each piece once between them and both get every piece; a piece whose builder died is built by the
process that waited for it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORKER = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[3])
    from tests.support.shared_build import build_all
    root, log = Path(sys.argv[1]), Path(sys.argv[2])

    def build(final):
        def run():
            time.sleep(0.6)
            tmp = final.with_name(final.name + f".{os.getpid()}")
            tmp.mkdir(parents=True)
            (tmp / "by").write_text(str(os.getpid()))
            os.replace(tmp, final)
            with log.open("a") as f:
                f.write(json.dumps([final.name, os.getpid()]) + "\\n")
        return run

    build_all([(root / name, build(root / name)) for name in ("a", "b", "c", "d")])
    assert all((root / name / "by").is_file() for name in "abcd")
""")


def test_two_processes_build_each_piece_once_between_them(tmp_path):
    log = tmp_path / "log.jsonl"
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path / "pieces"), str(log), str(ROOT)]) for _ in range(2)]
    assert [p.wait(60) for p in procs] == [0, 0]
    built = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(name for name, _ in built) == ["a", "b", "c", "d"]  # each once
    assert len({pid for _, pid in built}) == 2  # shared: both processes built some


def test_a_piece_left_by_a_dead_builder_is_built_by_the_waiter(tmp_path):
    from tests.support import shared_build

    final = tmp_path / "x"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        from tests.support.shared_build import _lock
        with _lock(Path({str(final)!r}), blocking=True):
            print("locked", flush=True)
            time.sleep(1.0)
            raise SystemExit(3)  # dies without building
    """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    calls = []
    shared_build.build_all([(final, lambda: (calls.append(1), final.mkdir()))])
    assert holder.wait(30) == 3 and calls == [1] and final.is_dir()
