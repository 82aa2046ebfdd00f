"""Weights registry: model cards, where their weights are found, and verified downloads.

- :mod:`.card`: :class:`ModelCard` (JSON schema checked by hand), built-in cards in ``cards/``.
- ``weights/``: the bundled demo weights and their held-out metrics (package data).
- :mod:`.resolve`: :func:`resolve_weights`, explicit path > cache > bundled > download.
- :mod:`.download`: :func:`download` (urllib, atomic, checksummed) and :func:`sha256_file`.
"""

from .card import CARDS_DIR, CARDS_PATH_ENV, ModelCard, card_dirs, get_card, list_cards, load_card, save_card
from .download import clear_hash_cache, download, sha256_file
from .resolve import (
                   BUNDLED_ENV,
                   BUNDLED_WEIGHTS_DIR,
                   CACHE_ENV,
                   bundled_weight_dirs,
                   cached_path,
                   default_cache_dir,
                   resolve_weights,
                   sidecar_path,
)

__all__ = [
    "CARDS_DIR", "CARDS_PATH_ENV", "ModelCard", "card_dirs", "get_card", "list_cards",
    "load_card", "save_card", "clear_hash_cache", "download", "sha256_file", "BUNDLED_ENV",
    "BUNDLED_WEIGHTS_DIR", "CACHE_ENV", "bundled_weight_dirs", "cached_path", "default_cache_dir",
    "resolve_weights", "sidecar_path",
]
