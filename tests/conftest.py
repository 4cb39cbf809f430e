import os

import torch

# The tests' problems are tiny: with several intra-op threads, their many small ops spend more time
# synchronising threads than computing (20x slower seen on a busy 2-core machine). Speed is measured
# by benchmarks/, not here.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")
