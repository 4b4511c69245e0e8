"""Speed and memory benchmarks, run on demand (not part of pytest): ``python -m benchmarks.<name>``.

Torch's page-aligned allocation mode is set here, before any benchmark imports torch, as
``gct-ablate`` sets it for its own processes (see ``gct_ablate._util.page_aligned_tensors``;
``THP_MEM_ALLOC_ENABLE=0`` in the environment turns it off). It applies to every case alike.
"""

from gct_ablate._util import page_aligned_tensors

page_aligned_tensors()
