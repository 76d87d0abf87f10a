__version__ = "0.1.0"

import os as _os
# Threads on a shared machine: OpenMP threads spin while they wait for work, so on a busy 2-core machine two torch
# threads fought the other jobs for the cores and a 2x32-token `generate` of the embedded model took 265 s against
# 10.9 s with one thread (load average ~14). With a passive wait it took 13.5 s. soft_sampler therefore asks for a
# passive wait unless you chose a policy yourself; it takes effect only when soft_sampler is imported before torch
# (the `soft-sampler` command always is). Otherwise set OMP_WAIT_POLICY=PASSIVE, or torch.set_num_threads(1).
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
