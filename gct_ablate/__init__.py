"""gct-ablate: ablation studies of the Gated Channel Transformation (GCT, CVPR 2020)."""

__version__ = "0.1.0"
