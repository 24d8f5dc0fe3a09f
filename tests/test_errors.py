"""Every error Puhui raises on purpose has its own stable, documented code."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import puhui
from puhui.errors import PuhuiError, all_error_classes

ERRORS_DOC = Path(__file__).resolve().parents[1] / "docs" / "errors.md"
SNAKE_CASE = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")
DOCUMENTED_CODE = re.compile(r"^\|\s*`([^`]+)`\s*\|", re.MULTILINE)


def _import_every_module() -> list[str]:
    names = []
    for module in pkgutil.walk_packages(puhui.__path__, prefix="puhui."):
        importlib.import_module(module.name)
        names.append(module.name)
    return names


def _puhui_error_classes() -> list[type[PuhuiError]]:
    _import_every_module()
    # Subclasses defined by tests (to exercise the hierarchy) are not part of the product.
    return [
        cls
        for cls in all_error_classes()
        if cls.__module__ == "puhui" or cls.__module__.startswith("puhui.")
    ]


def _documented_codes() -> set[str]:
    return set(DOCUMENTED_CODE.findall(ERRORS_DOC.read_text(encoding="utf-8")))


def test_walk_finds_the_packages() -> None:
    names = _import_every_module()
    assert {"puhui.errors", "puhui.money", "puhui.cli", "puhui.ledger"} <= set(names)


def test_every_error_defines_its_own_snake_case_code() -> None:
    for cls in _puhui_error_classes():
        assert "code" in vars(cls), f"{cls.__qualname__} inherits its code; give it its own"
        assert isinstance(cls.code, str)
        assert SNAKE_CASE.fullmatch(cls.code), f"{cls.__qualname__}.code {cls.code!r}"


def test_no_code_repeats() -> None:
    owners: dict[str, str] = {}
    for cls in _puhui_error_classes():
        name = f"{cls.__module__}.{cls.__qualname__}"
        assert cls.code not in owners, f"{name} repeats {cls.code!r} of {owners.get(cls.code)}"
        owners[cls.code] = name


def test_every_code_is_documented() -> None:
    documented = _documented_codes()
    missing = sorted(cls.code for cls in _puhui_error_classes() if cls.code not in documented)
    assert not missing, f"add these codes to docs/errors.md: {missing}"


def test_documented_codes_are_snake_case_and_listed_once() -> None:
    listed = DOCUMENTED_CODE.findall(ERRORS_DOC.read_text(encoding="utf-8"))
    listed = [code for code in listed if code != "code"]  # table headers, if back-quoted
    assert listed, "docs/errors.md lists no codes"
    assert len(listed) == len(set(listed)), "a code is listed twice in docs/errors.md"
    for code in listed:
        assert SNAKE_CASE.fullmatch(code), code


def test_every_error_is_a_puhui_error_with_code_and_message() -> None:
    for cls in _puhui_error_classes():
        assert issubclass(cls, PuhuiError)
        error = cls("something specific")
        assert error.code == cls.code
        assert error.message == "something specific"
        assert str(error) == f"{cls.code}: something specific"


def test_a_test_defined_duplicate_would_be_caught() -> None:
    """The uniqueness check is not vacuous: a subclass without its own code is visible."""

    class CarelessError(PuhuiError):
        pass

    assert CarelessError in all_error_classes()
    assert "code" not in vars(CarelessError)
    assert CarelessError.code == PuhuiError.code


@pytest.mark.parametrize("module", ["puhui.money", "puhui.cli"])
def test_modules_of_this_layer_have_errors(module: str) -> None:
    importlib.import_module(module)
    assert any(cls.__module__ == module for cls in _puhui_error_classes())


DOCUMENTED_ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|\s*`([^`]+)`[^|]*\|", re.MULTILINE)


def _resolve(dotted: str) -> object:
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name, None)


def test_every_documented_code_is_raised_by_the_class_the_page_names() -> None:
    """The other direction: a code on the page exists in the code, under the class it names,
    importable at that (public) name, unless the page marks it retired."""
    text = ERRORS_DOC.read_text(encoding="utf-8")
    rows = DOCUMENTED_ROW.findall(text)
    assert len(rows) == len([code for code in DOCUMENTED_CODE.findall(text) if code != "code"])
    by_code = {cls.code: cls for cls in _puhui_error_classes()}
    retired = set(re.findall(r"^\|\s*`([^`]+)`\s*\|.*\*retired\*", text, re.MULTILINE))
    wrong = []
    for code, dotted in rows:
        if code in retired:
            assert code not in by_code, f"{code} is marked retired but still raised"
            continue
        if code not in by_code:
            wrong.append(f"{code}: no error class has this code")
        elif _resolve(dotted) is not by_code[code]:
            wrong.append(f"{code}: {dotted} is not {by_code[code].__qualname__}")
    assert not wrong, f"docs/errors.md names codes or classes the code lacks: {wrong}"
