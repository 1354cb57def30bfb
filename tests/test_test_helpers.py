"""The test suite's own guards: ``need()`` skips locally but fails under CI; our modules are never import-skipped."""

from __future__ import annotations

import re

import pytest

from tests.conftest import REPO_ROOT, REQUIRE_SHARED_ENV, need
from tests.test_walls import PACKAGES


def test_need_returns_an_existing_path(tmp_path, monkeypatch):
    monkeypatch.setenv(REQUIRE_SHARED_ENV, "1")
    assert need(tmp_path) == tmp_path


@pytest.mark.parametrize("value", [None, "", "0"])
def test_need_skips_a_missing_path_without_the_ci_variable(tmp_path, monkeypatch, value):
    if value is None:
        monkeypatch.delenv(REQUIRE_SHARED_ENV, raising=False)
    else:
        monkeypatch.setenv(REQUIRE_SHARED_ENV, value)
    with pytest.raises(pytest.skip.Exception, match="not_there"):
        need(tmp_path / "not_there")


def test_need_fails_a_missing_path_under_the_ci_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(REQUIRE_SHARED_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match=f"not_there.*{REQUIRE_SHARED_ENV}=1") as err:
        need(tmp_path / "not_there")
    assert not isinstance(err.value, pytest.skip.Exception)


def test_ci_sets_the_variable_before_running_pytest():
    script = (REPO_ROOT / ".ci" / "run").read_text()
    export = script.find(f"export {REQUIRE_SHARED_ENV}=1")
    assert export != -1, f".ci/run must export {REQUIRE_SHARED_ENV}=1"
    assert export < script.find("run_pytest -q"), "the variable must be set before the first pytest run"


def test_no_test_import_skips_our_own_modules():
    """A broken import of the project's own code must fail, never skip."""
    bad = []
    for f in sorted((REPO_ROOT / "tests").glob("*.py")):
        for m in re.finditer(r"importorskip\(\s*['\"]([\w.]+)['\"]", f.read_text()):
            if m.group(1).split(".")[0] in PACKAGES:
                bad.append(f"{f.name}: importorskip({m.group(1)!r})")
    assert bad == []
