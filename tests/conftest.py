"""Test tiers for soft_sampler.

default  unit tests and notebook cells on tiny models and synthetic tensors (seconds each)
slow     tests and notebook cells on the real embedded model (run by `make test` and CI)
heavy    long experiments that regenerate committed result files (never in CI: `make heavy`)

`--tier default` runs the default tier only, `--tier slow` (the default) adds the slow tier,
`--tier heavy` runs everything. Tests are marked with `@pytest.mark.slow` / `@pytest.mark.heavy`;
notebook cells with nbdev's `#| slow` / `#| heavy` flags (see `tst_flags` in settings.ini).
"""
import contextlib, os
import pytest

TIERS = {"default": set(), "slow": {"slow"}, "heavy": {"slow", "heavy"}}
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")


@contextlib.contextmanager
def one_thread():
    "Tiny tensors: extra torch threads only add overhead (and contend on a busy machine); restored afterwards."
    import torch
    n = torch.get_num_threads(); torch.set_num_threads(1)
    try: yield
    finally: torch.set_num_threads(n)


def pytest_addoption(parser):
    parser.addoption("--tier", choices=sorted(TIERS), default=os.environ.get("SOFT_SAMPLER_TIER", "slow"),
                     help="highest test tier to run: default < slow < heavy (default: slow)")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: uses the real embedded model (run by make test and CI)")
    config.addinivalue_line("markers", "heavy: long experiment that regenerates committed results (make heavy)")


def enabled_flags(config) -> set:
    "The nbdev cell flags / pytest markers enabled by `--tier`."
    return TIERS[config.getoption("--tier")]


def pytest_collection_modifyitems(config, items):
    # the notebooks run first: the docs site (tests/test_docs.py) renders what they executed instead of running them again
    items.sort(key=lambda item: item.nodeid.split("::")[0] != "tests/test_notebooks.py")
    on = enabled_flags(config)
    for item in items:
        for flag in ("slow", "heavy"):
            if flag in item.keywords and flag not in on:
                item.add_marker(pytest.mark.skip(reason=f"{flag} tier (run with --tier {flag})"))


@pytest.fixture(scope="module")
def tiny():
    "A tiny random Llama and its character tokenizer (seed 0), shared by a test module."
    from soft_sampler.core import tiny_model
    return tiny_model(seed=0)


@pytest.fixture(scope="module")
def tiny_varied():
    "A tiny random Llama with larger weights (`init_std=0.5`): its greedy output varies, so position/offset bugs show."
    from soft_sampler.core import tiny_model
    return tiny_model(seed=0, init_std=0.5)


@pytest.fixture(scope="module")
def real():
    "The embedded SmolLM2-135M-Instruct and its tokenizer (slow tier), loaded once per test module."
    from soft_sampler.core import load_model
    return load_model()


CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str:
    "The Chromium the browser tests drive: `$SOFT_SAMPLER_CHROMIUM`, else `chromium` on PATH."
    import shutil
    for name in (os.environ.get("SOFT_SAMPLER_CHROMIUM"), "chromium", "chromium-browser"):
        if name and shutil.which(name): return shutil.which(name)
    pytest.fail("no chromium for the browser tests: run tools/ensure_chromium.sh (make setup does) "
                "or set SOFT_SAMPLER_CHROMIUM=/path/to/chrome", pytrace=False)


@pytest.fixture(scope="session")
def browser():
    "A headless Chromium driven by Playwright (system chromium; Playwright's own download is not used)."
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="session")
def screenshots():
    "Where browser tests save screenshots for people to look at (`$SOFT_SAMPLER_SCREENSHOTS` or `screenshots/`)."
    from pathlib import Path
    d = Path(os.environ.get("SOFT_SAMPLER_SCREENSHOTS", Path(__file__).parent.parent/"screenshots"))
    d.mkdir(parents=True, exist_ok=True)
    return d
