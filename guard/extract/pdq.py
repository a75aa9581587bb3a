"""PDQ perceptual hashes (Meta's, via the ``pdqhash`` package) of decoded images.

A PDQ hash is 256 bits; two pictures match when their hashes differ in at most ~31 bits
(re-encoded, resized, slightly cropped copies stay within that). Hashes of low quality
(flat, featureless images) say little and are ignored by policy.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def pdq(img: Image.Image, dihedral: bool = False) -> tuple[np.ndarray, int]:
    """``(hashes [k, 32] packed uint8, quality)``: k = 8 with the dihedral variants, else 1."""
    import pdqhash

    pixels = np.asarray(img.convert("RGB"), dtype=np.uint8)
    if dihedral:
        hashes, quality = pdqhash.compute_dihedral(pixels)
    else:
        single, quality = pdqhash.compute(pixels)
        hashes = [single]
    return np.packbits(np.asarray(hashes, dtype=np.uint8), axis=1), int(quality)


def distances(queries: np.ndarray, stored: np.ndarray) -> np.ndarray:
    """Smallest Hamming distance from any query hash ``[k, 32]`` to each stored hash ``[n, 32]``."""
    if stored.size == 0:
        return np.zeros(0, dtype=np.int64)
    xor = queries[:, None, :] ^ stored[None, :, :]
    return _POPCOUNT[xor].sum(axis=2, dtype=np.int64).min(axis=0)
