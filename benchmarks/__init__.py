"""Speed and memory benchmarks, run on demand (not part of pytest): ``python -m benchmarks.<name>``.

Torch's page-aligned allocation mode (``THP_MEM_ALLOC_ENABLE=1``: CPU buffers of 2 MiB and
more page-aligned and advised for huge pages) is set here, before any benchmark imports
torch, unless the environment sets it (``0`` turns it off). It steadies the timing of small
GCT calls from process to process and applies to every case alike. ``gct-ablate`` itself
leaves it off: in a training process it costs about 200 MiB of peak memory for no measured
speed (benchmarks/README.md).
"""

import os

THP_ENV = "THP_MEM_ALLOC_ENABLE"
os.environ.setdefault(THP_ENV, "1")
