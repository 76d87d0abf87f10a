"The architecture the module map promises: nothing imports upwards, no cycles, no private name crosses a module."
import importlib.util, textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _shape():
    spec = importlib.util.spec_from_file_location("lesson_shape", ROOT/"tools"/"lesson_shape.py")
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


def _imports():
    shape = _shape()
    return shape.import_measures(shape.module_numbers(sorted((ROOT/"nbs").glob("[0-9]*.ipynb"))))


def test_nothing_imports_upwards():
    up = _imports()["upward_imports"]
    assert not up, f"a module imports from a higher-numbered notebook's module (lazy imports count): {up}"


def test_no_import_cycles():
    assert not _imports()["cycles"]


def test_no_private_name_crosses_a_module():
    private = _imports()["private_names_across_modules"]
    assert not private, f"import the public name instead, or move the helper down: {private}"


def test_the_checker_sees_upward_and_private_imports(tmp_path):
    "The check itself can fail: a fake low module importing a private name from a higher one is reported."
    shape = _shape()
    lib = tmp_path/"soft_sampler"; lib.mkdir()
    (lib/"low.py").write_text("def f():\n    from soft_sampler.high import _secret\n")
    (lib/"high.py").write_text("from soft_sampler.low import f\n_secret = 1\n")
    shape.LIB = lib
    res = shape.import_measures({"low": 1, "high": 2})
    assert res["upward_imports"] == ["low (01) -> high (02) line 2"]
    assert res["private_names_across_modules"] == ["low <- high._secret"]
    assert res["cycles"] == ["high <-> low"]
