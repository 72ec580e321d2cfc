"""Weight evidence: streamed per-tensor and per-layer similarity (raw and centred), layer and expert
correspondence, tensor signatures, embedding statistics, PCA, exact reuse.

What it can show: weights descend from a reference's. What it cannot: distillation (weights
trained anew on a teacher's outputs look independent).
"""

