"""modellineage: measure the provenance evidence of language models; never judge it.

The library opens models lazily, streams their tensors and returns plain records.
Pass/fail lives in the audits (``audits/``) and the pytest plugin.
"""

__version__ = "0.1.0"
