"""Compute evidence: training FLOPs from parameter and token counts, against a claimed GPU budget.
"""

from .estimate import (
    Accelerator,
    ParameterCount,
    TrainingCompute,
    Utilisation,
    ambiguous_accelerator_names,
    count_active_parameters,
    find_accelerator,
    gpu_days,
    implied_utilisation,
    load_accelerators,
    plain_claim,
    plain_count,
    plain_duration,
    plain_flops,
    plain_number,
    plain_summary,
    plain_utilisation,
    training_compute,
)

__all__ = ["ParameterCount", "count_active_parameters", "Accelerator", "load_accelerators", "find_accelerator", "ambiguous_accelerator_names", "TrainingCompute", "training_compute", "Utilisation", "implied_utilisation", "gpu_days", "plain_number", "plain_count", "plain_duration", "plain_claim", "plain_flops", "plain_summary", "plain_utilisation"]
