"""What the guard needs of an encoder: the `Encoder` protocol `OpenClipEncoder` implements.

A platform with its own embedding service can pass any object of this shape to `Guard`;
the bank records the encoder's ``name`` and refuses another one.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence, runtime_checkable

from guard.extract.images import ImageInput


@runtime_checkable
class Encoder(Protocol):
    #: The canonical identity banks and verdicts record (the weights' identity, not a path).
    name: str
    #: False for an encoder whose similarities mean nothing (the tiny test encoder).
    meaningful: bool
    #: The embedding width.
    dim: int

    def encode_texts(self, texts: Sequence[str]) -> Any:
        """``[len(texts), dim]`` unit-norm float embeddings (a torch tensor)."""

    def encode_images(self, images: Sequence[ImageInput]) -> Any:
        """``[len(images), dim]`` unit-norm embeddings; `UnreadableImage` for a bad input."""

    def iter_image_batches(self, images: Sequence[ImageInput], batch_size: int | None = None,
                           extract: Callable[[Any], Mapping[str, Any]] | None = None
                           ) -> Iterator[tuple[list[int], Any, Mapping[int, str], Mapping[int, Mapping[str, Any]]]]:
        """Per batch: the indices embedded, their embeddings, failures by index, and per index
        the image's ``sha256`` plus what ``extract`` returned for it."""
