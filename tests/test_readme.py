"""README.md's examples: every code block is fenced with a language, and every python / bash block runs
(``tests/support/readme_examples.py`` reads and runs them on the fake hub of ``readme_world``); a README
edit that breaks an example fails here."""

from __future__ import annotations

import json
import re

import pytest

from tests.support import readme_checks
from tests.support import readme_examples as rx

SESSIONS = sorted(rx.sessions())
# The sessions that chain many fresh processes through a cluster or a CLI pipeline (the ReasonScore views: 13
# `reason-sae` runs; lm_eval CLI runs; on-policy engines; a Ray cluster): `make test-e2e` runs them, CI runs both.
E2E_SESSIONS = {"score", "lmeval", "onpolicy", "ray"}


def test_every_example_is_fenced_with_a_known_language():
    assert rx.fence_problems() == []


def test_the_rules_catch_what_they_should():
    text = "    indented\n\n```py\nx\n```\n\n```python\nx\n```\n\n```text session=a\nx\n```\n\n```python session=a serve\nx\n```\n"
    problems = "\n".join(rx.fence_problems(text))
    for expected in ("line 1: indented", "'py'", "line 7: a python block without session", "directives on a text block",
                     "serve on a python block"):
        assert expected in problems, problems


def test_consecutive_python_blocks_of_a_session_are_one_script():
    text = ("```python session=a\nx = 1\n```\n\n```python session=b\ny = 0\n```\n\n```text\nz\n```\n\n"
            "```python session=a\nprint(x)\n```\n\n```bash session=a\necho\n```\n\n```bash session=a serve\nsrv\n```\n")
    steps = rx.steps(rx.sessions(rx.blocks(text))["a"])
    assert [s.kind for s in steps] == ["serve", "python", "bash"]
    assert "x = 1" in steps[1].code and "print(x)" in steps[1].code


def test_every_substitution_still_matches_its_session():
    assert rx.used_in_text() == [], "stale entries in readme_examples.SUBSTITUTIONS"


def test_sessions_run_offline(tmp_path):
    env = rx.session_env(tmp_path)
    assert env["HF_HUB_OFFLINE"] == "1" and env["HF_HUB_CACHE"].startswith(str(tmp_path))


def _run(session, world, tmp_path, record_property):
    used: set = set()
    timings = rx.run_session(session, world, tmp_path, used=used)
    record_property("timings", json.dumps(timings))
    print(session, timings, "wall", sum(t[1] for t in timings), "cpu", sum(t[2] for t in timings))
    expected = {i for i, s in enumerate(rx.SUBSTITUTIONS) if s.session == session}
    assert used == expected, f"substitutions never used: {[rx.SUBSTITUTIONS[i] for i in expected - used]}"
    check = readme_checks.CHECKS.get(session)
    if check is not None:  # what the session wrote, beyond its exit codes
        check(tmp_path)


# One class per session: with `--dist loadscope` a class is one unit of work, so `make test`'s two workers share the
# sessions one by one (tests/conftest.py orders them by their seconds, the longest first), each on the worker that is
# free; the fake world is built once per worker (a few seconds).
def _session_class(session: str) -> type:
    @pytest.mark.slow
    class Session:
        pytestmark = [pytest.mark.e2e] if session in E2E_SESSIONS else []

        def test_session_runs(self, readme_world, tmp_path, record_property):
            _run(session, readme_world, tmp_path, record_property)

    Session.__name__ = Session.__qualname__ = session_class_name(session)
    return Session


def session_class_name(session: str) -> str:
    return "TestSession_" + re.sub(r"\W", "_", session)


for _session in SESSIONS:
    globals()[session_class_name(_session)] = _session_class(_session)


def test_every_session_has_its_own_class():
    assert sorted(name for name in globals() if name.startswith("TestSession_")) == sorted(map(session_class_name, SESSIONS))


def test_the_e2e_sessions_are_sessions():
    """A renamed session cannot leave `make test-e2e` (and so CI) silently: each name in E2E_SESSIONS is a session."""
    assert E2E_SESSIONS <= set(SESSIONS), E2E_SESSIONS - set(SESSIONS)
