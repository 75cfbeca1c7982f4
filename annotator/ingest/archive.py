"""What an upload holds, read safely: the files of a zip or a server-side folder, sorted into images, reference masks
and a labels file, before anything is stored.

By path: a `labels.csv` (`filename,label`) gives image-level labels; any file inside a folder named `masks` is a
reference (ground-truth) mask; every other file is an image. A file whose path breaks the name rule (`name_problem`)
is reported and goes no further. Zip members are read in capped chunks whatever their headers claim, so neither a
large upload nor a zip bomb is ever held whole in memory.
"""
from __future__ import annotations

import copy
import re
import sys
import unicodedata
import zipfile
import zlib
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Callable

from django.conf import settings

from annotator.models import Image

LABELS_FILE = "labels.csv"
MASKS_FOLDER = "masks"
MASK_NAME = re.compile(r"^(?P<stem>.+?)(?:_mask(?:_\d+)?)?$")  # BUSI's names: x.png, x_mask.png, x_mask_1.png
SKIPPED_PREFIXES = ("__MACOSX/",)
EXPORT_INDEX = "index.json"  # our own PNG export's index: its images, masks/ and labels.csv carry everything
READ_CHUNK = 1024**2
RATIO_CHECKED_FROM = 1024**2  # a smaller member cannot hurt, whatever its compression ratio
NAME_MAX_CHARS = Image._meta.get_field("original_name").max_length
# What no stored name holds: control characters (Cc: newline, tab, NUL...), format characters (Cf: the bidi overrides
# that show a name reversed, zero-width characters), surrogates (Cs) and the line and paragraph separators (Zl, Zp).
NAME_FORBIDDEN_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}


class UploadError(Exception):
    """A file (or the whole upload) that cannot be used; the message says why."""


@dataclass
class IngestEntry:
    name: str
    read: Callable[[int], bytes]  # read(limit): the file's bytes, or UploadError when unreadable or over limit


@dataclass
class UploadContents:
    images: list[IngestEntry] = field(default_factory=list)
    masks: list[IngestEntry] = field(default_factory=list)
    labels: IngestEntry | None = None
    errors: list[dict] = field(default_factory=list)


def zip_entries(source) -> UploadContents:
    """The files of a zip (a path or a seekable file object, e.g. an upload spooled to disk), checked and sorted
    before anything is stored; no member is read yet."""
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as error:
        raise UploadError(f"not a readable zip archive ({error})") from error
    members = [m for m in archive.infolist() if not m.is_dir() and not m.filename.startswith(SKIPPED_PREFIXES)]
    if len(members) > settings.UPLOAD_MAX_FILES:
        raise UploadError(f"the archive holds {len(members)} files; at most {settings.UPLOAD_MAX_FILES} are accepted")
    return _contents_sort([IngestEntry(m.filename, partial(_member_read, archive, m)) for m in members])


def folder_entries(folder: Path, labels_file: Path | None = None, masks_folder: Path | None = None) -> UploadContents:
    """The files under a server-side folder, subfolders included; a `labels_file` or `masks_folder` given inside it
    is not taken for images."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UploadError(f"{folder} is not a folder")
    given_labels = labels_file.resolve() if labels_file else None
    given_masks = masks_folder.resolve() if masks_folder else None
    entries = [
        IngestEntry(str(path.relative_to(folder)), partial(_file_read, path))
        for path in _files_under(folder)
        if path.resolve() != given_labels and (given_masks is None or given_masks not in path.resolve().parents)
    ]
    return contents_extend(_contents_sort(entries), labels_file, masks_folder)


def contents_extend(contents: UploadContents, labels_file: Path | None = None,
                    masks_folder: Path | None = None) -> UploadContents:
    """Labels and masks given beside an upload (server-side paths); the labels file replaces any labels.csv in it."""
    if labels_file is not None:
        if not labels_file.is_file():
            raise UploadError(f"{labels_file} is not a file")
        if contents.labels is not None:
            contents.errors.append({"name": contents.labels.name, "reason": f"not used: labels come from "
                                                                            f"{labels_file.name}"})
        contents.labels = IngestEntry(labels_file.name, partial(_file_read, labels_file))
    if masks_folder is not None:
        if not masks_folder.is_dir():
            raise UploadError(f"{masks_folder} is not a folder")
        for path in _files_under(masks_folder):
            name = str(path.relative_to(masks_folder.parent))
            if problem := name_problem(name):
                contents.errors.append({"name": name_shown(name), "reason": problem})
            else:
                contents.masks.append(IngestEntry(name, partial(_file_read, path)))
    return contents


def _files_under(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file() and not path.is_symlink())


def _contents_sort(entries: list[IngestEntry]) -> UploadContents:
    contents = UploadContents()
    for entry in entries:
        path = path_of(entry.name)
        if str(path) == EXPORT_INDEX:
            continue
        if problem := name_problem(entry.name):
            contents.errors.append({"name": name_shown(entry.name), "reason": problem})
        elif path.name == LABELS_FILE:
            if contents.labels is None:
                contents.labels = entry
            else:
                contents.errors.append({"name": entry.name, "reason": f"not used: labels come from "
                                                                      f"{contents.labels.name}"})
        elif MASKS_FOLDER in (part.lower() for part in path.parts[:-1]):
            contents.masks.append(entry)
        else:
            contents.images.append(entry)
    return contents


def _file_read(path: Path, limit: int) -> bytes:
    try:
        size = path.stat().st_size
        if size > limit:
            raise UploadError(f"{size} bytes, over the limit of {limit}")
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as error:
        raise UploadError(f"cannot be read ({error})") from error
    if len(data) > limit:
        raise UploadError(f"over the limit of {limit} bytes")
    return data


def _member_read(archive: zipfile.ZipFile, member: zipfile.ZipInfo, limit: int) -> bytes:
    """A member's bytes, decompressed in chunks and stopped as soon as they pass `limit` or an absurd ratio."""
    if member.file_size > limit:
        raise UploadError(f"{member.file_size} bytes uncompressed, over the limit of {limit}")
    max_ratio = settings.UPLOAD_MAX_COMPRESSION_RATIO
    if member.file_size > max(RATIO_CHECKED_FROM, max_ratio * member.compress_size):
        raise UploadError(f"compressed more than {max_ratio}:1 (possible zip bomb)")
    # zipfile stops at the size the header declares, so a lying header would pass for a short, broken file. A copy
    # that declares no end lets the compressed data itself decide where the member ends; the cap stops the read.
    unbounded = copy.copy(member)
    unbounded.file_size = sys.maxsize
    data = bytearray()
    try:
        with archive.open(unbounded) as stream:
            while chunk := stream.read(min(READ_CHUNK, limit + 1 - len(data))):
                data += chunk
                if len(data) > limit:
                    raise UploadError(f"over the limit of {limit} bytes uncompressed (its header said "
                                      f"{member.file_size}: possible zip bomb)")
                if len(data) > max(RATIO_CHECKED_FROM, max_ratio * member.compress_size):
                    raise UploadError(f"compressed more than {max_ratio}:1 (possible zip bomb)")
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, RuntimeError, NotImplementedError) as error:
        raise UploadError(f"cannot be read from the archive ({error})") from error
    if len(data) != member.file_size:
        raise UploadError(f"the archive's header says {member.file_size} bytes but the file holds {len(data)} "
                          "(damaged or forged archive)")
    return bytes(data)


def path_of(name: str) -> PurePosixPath:
    return PurePosixPath(name.replace("\\", "/"))  # zips made on Windows may use backslashes


def safe_path(name: str) -> PurePosixPath:
    path = path_of(name)
    if path.is_absolute() or ".." in path.parts:
        raise UploadError("unsafe path (absolute or with '..'); skipped")
    return path


def name_problem(name: str) -> str | None:
    """Why a file's path (folders included) cannot be stored as it is, or None: a character no name may hold, or a
    file name too long for the database."""
    if forbidden := sorted({character for character in name if _forbidden(character)}):
        return (f"the name holds {', '.join(map(_escaped, forbidden))}; a name may hold no control or invisible "
                "formatting characters; skipped")
    if len(path_of(name).name) > NAME_MAX_CHARS:
        return f"the file name is {len(path_of(name).name)} characters long; at most {NAME_MAX_CHARS}; skipped"
    return None


def name_shown(name: str) -> str:
    """The name with each forbidden character written as its escape (`\\n`, `\\u202e`), as reports show it."""
    return "".join(_escaped(c) if _forbidden(c) else c for c in name)


def name_cleaned(name: str) -> str:
    """The name with each forbidden character replaced by `_`: for names stored before the rule."""
    return "".join("_" if _forbidden(c) else c for c in name)


def _forbidden(character: str) -> bool:
    return unicodedata.category(character) in NAME_FORBIDDEN_CATEGORIES


def _escaped(character: str) -> str:
    return character.encode("unicode_escape").decode("ascii")
