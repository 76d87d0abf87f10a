"""What every benchmark prints beside its figures: the CPU and the vector width torch uses on it, torch's thread
count, the OpenMP wait policy and the load average.

The CPU matters for the ratios against one softmax: the softmax is vectorised (AVX-512 where torch finds it), while
selection, sorting and `bincount` run element by element. The same code measured 2.0 softmaxes for top-k 1000 at
[64, 49152] on one session's Intel machine and 10 on another's AMD EPYC (AVX-512) before it changed.

`import machine; machine.report()` at the start of a benchmark's `__main__` prints one line now and one more when
the process ends (the load may change during a run): compare figures only between runs at similar loads.
"""
import atexit, os


def cpu() -> str:
    "The CPU's model name (Linux: /proc/cpuinfo) and torch's vector capability on it, e.g. 'AMD EPYC, AVX512'."
    import platform, torch
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), name)
    except OSError: pass
    return f"{name}, {torch.backends.cpu.get_cpu_capability()}"


def line() -> str:
    import torch
    l1, l5, _ = os.getloadavg()
    return (f"{cpu()}, {torch.get_num_threads()} torch thread(s), {os.cpu_count()} cores, OMP_WAIT_POLICY (env)="
            f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}, load average {l1:.2f} (1 min) {l5:.2f} (5 min)")


def report() -> None:
    print(f"machine: {line()}", flush=True)
    atexit.register(lambda: print(f"machine at the end: {line()}", flush=True))
