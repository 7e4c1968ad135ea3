"""Layer 5 (adaptive): decisions that change how the state runs, never what a reader sees.

Which implementation runs a hot operation (a Pallas kernel or the XLA path), chosen by
measurement (:data:`MEASURED_FASTER`); when to checkpoint so the replay tail stays bounded
(:class:`CheckpointPolicy`); where pages sit in their pools (:func:`layout_order`). May import every layer below the shell
(``pages``, ``deltas``, ``log``, ``graph``, ``semirings``); it imports ``pallas_kernels`` only
lazily, inside the functions that run a kernel, so the packages form no import circle.
"""

from ._checkpoint_policy import (
    CheckpointPolicy as CheckpointPolicy,
    checkpoint_policy as checkpoint_policy,
)
from ._layout import LAYOUT_METHODS as LAYOUT_METHODS, layout_order as layout_order
from ._kernels import (
    KERNELS as KERNELS,
    MEASURED_FASTER as MEASURED_FASTER,
    MODES as MODES,
    backend_report as backend_report,
    get_backend as get_backend,
    gpu_lowering as gpu_lowering,
    interpret as interpret,
    set_backend as set_backend,
    use_pallas as use_pallas,
)
