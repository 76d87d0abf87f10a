"""What every benchmark prints beside its figures: torch's thread count, the OpenMP wait policy and the load average.

`import machine; machine.report()` at the start of a benchmark's `__main__` prints one line now and one more when
the process ends (the load may change during a run): compare figures only between runs at similar loads.
"""
import atexit, os


def line() -> str:
    import torch
    l1, l5, _ = os.getloadavg()
    return (f"{torch.get_num_threads()} torch thread(s), {os.cpu_count()} cores, OMP_WAIT_POLICY (env)="
            f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}, load average {l1:.2f} (1 min) {l5:.2f} (5 min)")


def report() -> None:
    print(f"machine: {line()}", flush=True)
    atexit.register(lambda: print(f"machine at the end: {line()}", flush=True))
