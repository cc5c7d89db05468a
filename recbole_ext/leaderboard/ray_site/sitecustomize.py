"""Put on PYTHONPATH of Ray workers only: ray 2.6 uses ``np.bool8``, which numpy 2 removed, while importing itself,
before any task code could add the alias."""
try:
    import numpy as _np

    if not hasattr(_np, "bool8"):
        _np.bool8 = _np.bool_
except ImportError:
    pass
