"""medseg_kernels: sequence-operator kernels (selective scan, mLSTM) with a pure-PyTorch reference
beside every fast path and one dispatcher per op. Installed as ``medseg_kernels`` so that it never
collides with the PyPI package called ``kernels``."""

if __name__ != "medseg_kernels":  # imported as the repository folder
    raise ImportError(f"medseg's kernels are imported as `medseg_kernels`, not `{__name__}`: use `import medseg_kernels`")


def load_all_ops() -> None:
    """Import every op package so that its backends are registered."""
    import medseg_kernels.mlstm  # noqa: F401
    import medseg_kernels.selective_scan  # noqa: F401
