"""modellineage: measure the provenance evidence of language models; never judge it.

The library opens models lazily, streams their tensors and returns plain records; pass/fail lives in
the audits (``audits/``, run by pytest or the ``modellineage`` command). One sub-package per layer:

* :mod:`modellineage.reading` — sources, confinement, bounded parsing, tensors, hashing, naming, configs;
* one per evidence family, each with a ``measure(...)`` entry point: :mod:`~modellineage.tokenizer`,
  :mod:`~modellineage.weights`, :mod:`~modellineage.independence`, :mod:`~modellineage.architecture`,
  :mod:`~modellineage.catalog`, :mod:`~modellineage.compute`, :mod:`~modellineage.training` (checkpoint
  chains and training logs);
* :mod:`modellineage.reporting` — evidence JSON, the HTML report, plots, the combined verdict.

>>> from modellineage import open_model, weights                    # doctest: +SKIP
>>> base, tuned = open_model("fixtures/demo/base"), open_model("fixtures/demo/finetune")
>>> weights.measure(tuned, base, min_layer_match=0.3).comparison.by_category
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modellineage.reading.model import Model

__version__ = "0.1.0"
__all__ = ["__version__", "open_model"]


def open_model(source: str | Path, *, name: str | None = None, allow_download: bool = False) -> "Model":
    """Open a model lazily: a folder, a ``.safetensors`` file or a Hugging Face repo id in the local cache.

    Nothing is read until a measurement asks; nothing is downloaded unless ``allow_download``.
    """
    from modellineage.reading.model import Model
    from modellineage.reading.sources import resolve_source

    src = resolve_source(str(source), allow_download=allow_download)
    return Model(name or Path(str(source)).name or str(source), src)
