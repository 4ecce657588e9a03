"""``tests.conftest.require``: a missing prerequisite skips with what to install, but fails under CI."""

from __future__ import annotations

import pytest

from tests.conftest import require


@pytest.mark.parametrize("ci", ["true", "1", "yes", "TRUE"])
def test_under_ci_a_missing_prerequisite_fails(monkeypatch: pytest.MonkeyPatch, ci: str) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match="the frobnicator is missing: pip install frobnicator"):
        require(False, "the frobnicator", "pip install frobnicator")


@pytest.mark.parametrize("ci", [None, "", "false", "0"])
def test_outside_ci_it_skips_saying_what_to_install(monkeypatch: pytest.MonkeyPatch, ci: str | None) -> None:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception, match="the frobnicator is missing: pip install frobnicator"):
        require(False, "the frobnicator", "pip install frobnicator")


def test_a_present_prerequisite_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    require(True, "the frobnicator", "pip install frobnicator")
