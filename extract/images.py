"""Image sets: a folder of images (recursive) or a text file listing image paths.

Ids are POSIX paths relative to the image root, and the order is always the
ids sorted as strings (so `test_images/...` sorts before `training_images/...`
in a THINGS folder, and within a concept folder files sort by name, the order
THINGS-EEG rows follow). Pointing at a THINGS split folder (`training_images`,
`train_images`, `test_images`) uses its parent as the root, so ids keep the
split prefix the brain datasets refer to.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Union

from sa.errors import SAError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
THINGS_SPLITS = ("training_images", "train_images", "test_images")


def _is_image(path: Path, root: Path) -> bool:
    """An image file by suffix, not hidden (no part of its path below `root` starts with a dot)."""
    hidden = any(part.startswith(".") for part in path.relative_to(root).parts)
    return not hidden and path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


@dataclass(frozen=True)
class ImageSet:
    """An ordered set of images: `root` (a folder) and `ids` (sorted POSIX paths relative to it)."""

    root: Path
    ids: tuple[str, ...]
    source: str = ""  # what the user passed (folder or list file)

    @classmethod
    def from_path(cls, path: Union[str, Path]) -> "ImageSet":
        """A folder (recursive; THINGS split folders understood) or a .txt file with one image path per line."""
        p = Path(path).expanduser()
        if not p.exists():
            raise SAError(f"--images {path} does not exist; pass an image folder or a text file listing images.")
        if p.is_dir():
            return cls._from_folder(p.resolve())
        return cls._from_list(p.resolve())

    @classmethod
    def _from_folder(cls, folder: Path) -> "ImageSet":
        root = folder.parent if folder.name in THINGS_SPLITS else folder
        ids = sorted(f.relative_to(root).as_posix() for f in folder.rglob("*") if _is_image(f, root))
        if not ids:
            raise SAError(f"--images {folder} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))}); point it at the image folder.")
        return cls(root, tuple(ids), str(folder))

    @classmethod
    def _from_list(cls, listing: Path) -> "ImageSet":
        try:
            lines = [ln.strip() for ln in listing.read_text().splitlines()]
        except UnicodeDecodeError:
            raise SAError(f"--images {listing} is neither a folder nor a text list of image paths.") from None
        entries = [ln for ln in lines if ln and not ln.startswith("#")]
        if not entries:
            raise SAError(f"--images {listing} lists no images; write one image path per line.")
        paths = [(Path(e) if Path(e).is_absolute() else listing.parent / e).resolve() for e in entries]
        missing = [str(q) for q in paths if not q.is_file()]
        if missing:
            raise SAError(f"{listing} lists {len(missing)} missing file(s), first {missing[0]}; fix the list or the paths.")
        root = listing.parent.resolve()
        if not all(q.is_relative_to(root) for q in paths):
            import os

            root = Path(os.path.commonpath([str(q.parent) for q in paths]))
        ids = sorted({q.relative_to(root).as_posix() for q in paths})
        return cls(root, tuple(ids), str(listing))

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def paths(self) -> list[Path]:
        """Absolute paths, in id order."""
        return [self.root / i for i in self.ids]

    @property
    def layout(self) -> str:
        """'things' when the ids sit under THINGS split folders, else 'folder'."""
        tops = {i.split("/", 1)[0] for i in self.ids}
        return "things" if tops and tops <= set(THINGS_SPLITS) else "folder"

    def read_bytes(self, image_id: str) -> bytes:
        """The raw bytes of one image (for the image-set digest)."""
        return (self.root / image_id).read_bytes()

    def digest(self) -> str:
        """The image-set id: sa.cache.keys.image_set_id over the ordered ids and the images' bytes."""
        from sa.cache.keys import image_set_id

        return image_set_id(list(self.ids), self.read_bytes)
