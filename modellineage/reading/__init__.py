"""The reading layer: sources (local folders, the Hugging Face cache), confinement of every read to a
source's root, bounded parsing of hostile files, streamed safetensors tensors, hashing, config
normalisation and the canonical naming of tensors. Every evidence family reads through it.
"""

