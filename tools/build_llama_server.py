"""Build llama.cpp's `llama-server` once, from the llama.cpp vendored in the PyPI llama-cpp-python sdist.

The binary is cached outside git at `~/.cache/soft_sampler/llama-server/<version>/llama-server`
(`$SOFT_SAMPLER_CACHE` moves it); a second run is a no-op. ~5 min on 2 cores. Used by `make llama-server`
and by the slow tests of `tests/test_remote.py` when the binary is missing.
"""
import argparse, sys
from soft_sampler.remote import LLAMA_CPP_PYTHON_VERSION, build_llama_server

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--version", default=LLAMA_CPP_PYTHON_VERSION, help="llama-cpp-python sdist version")
    p.add_argument("--jobs", type=int, default=2); p.add_argument("--force", action="store_true", help="rebuild")
    a = p.parse_args()
    print(build_llama_server(a.version, a.jobs, a.force))
    sys.exit(0)
