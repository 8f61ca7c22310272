"""medseg_kernels: sequence-operator kernels (selective scan, mLSTM) with a pure-PyTorch reference
beside every fast path and one dispatcher per op. Installed as ``medseg_kernels`` so that it never
collides with the PyPI package called ``kernels``."""


def load_all_ops() -> None:
    """Import every op package so that its backends are registered."""
    import medseg_kernels.mlstm  # noqa: F401
    import medseg_kernels.selective_scan  # noqa: F401
