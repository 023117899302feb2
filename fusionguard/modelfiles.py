"""A model's files on disk: the .onnx, the external-data files it references, their sha256.

`model_manifest` is the evidence both ends of a promotion compare: the gate records it in
report.json, `promote` recomputes it before copying, and the registry re-checks it whenever a
version is served. External-data locations must be plain relative paths inside the model's
directory (no absolute paths, no `..`), and no file may be a symlink, so a manifest can never
cover a file outside the model it describes.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path, PurePosixPath
from typing import Any

from fusionguard.errors import InvalidInputError

MODEL_FILE = "model.onnx"  # the manifest key of the .onnx file itself, whatever its name on disk
# Names the registry keeps beside a promoted model: external data may not use them.
RESERVED = frozenset({MODEL_FILE, "report.json", "profile.json", "meta.json"})
FILE_MODE = 0o644
HEX64 = re.compile(r"^[0-9a-f]{64}$")

Manifest = dict[str, str]  # relative path (the model file as "model.onnx") -> hex sha256


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def regular_file(path: Path, what: str) -> None:
    """Refuse a symlink, a missing file or anything but a regular file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise InvalidInputError(f"{what} {path} does not exist") from None
    except OSError as err:
        raise InvalidInputError(f"{what} {path} cannot be read ({err})") from None
    if stat.S_ISLNK(st.st_mode):
        raise InvalidInputError(f"{what} {path} is a symbolic link; fusionguard reads only regular files here")
    if not stat.S_ISREG(st.st_mode):
        raise InvalidInputError(f"{what} {path} is not a regular file")


def external_data_files(model: str | Path) -> list[str]:
    """Relative paths of the external-data files an ONNX model references, sorted.

    Raises:
        InvalidInputError: the file is not a readable ONNX model, or a location is absolute,
            leaves the model's directory, or collides with a registry file name.
    """
    import onnx  # the core may import onnx; loading it lazily keeps `fusionguard --help` fast
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    path = Path(model)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # onnx raises DecodeError and others for files that are not models
        raise InvalidInputError(f"{path} is not a readable ONNX model ({type(err).__name__}: {err})") from None
    if not proto.graph.output or not proto.graph.node:
        raise InvalidInputError(f"{path} is not a usable ONNX model: its graph has no nodes or no outputs")
    tensors = [s.values for s in proto.graph.sparse_initializer]
    pending = [proto.graph]
    while pending:  # initializers and attribute tensors, also inside subgraphs (If / Loop bodies)
        graph = pending.pop()
        tensors += list(graph.initializer)
        for node in graph.node:
            for attr in node.attribute:
                tensors += ([attr.t] if attr.HasField("t") else []) + list(attr.tensors)
                pending += ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)
    locations = set()
    for tensor in tensors:
        if not uses_external_data(tensor):
            continue
        location = ExternalDataInfo(tensor).location
        pure = PurePosixPath(location)
        if not location or pure.is_absolute() or ".." in pure.parts or "\\" in location or location != str(pure):
            raise InvalidInputError(
                f"{path}: external data location {location!r} of tensor '{tensor.name}' is not a plain relative path "
                "inside the model's directory; re-export the model with its weights next to it"
            )
        if pure.parts[0] in RESERVED or pure.parts[0].startswith("."):
            raise InvalidInputError(f"{path}: external data location {location!r} collides with a registry file name")
        locations.add(location)
    return sorted(locations)


def model_manifest(model: str | Path) -> Manifest:
    """sha256 of the model file (under the key "model.onnx") and of each external-data file.

    Raises:
        InvalidInputError: a symlink, a missing file, or a model that is not readable ONNX.
    """
    path = Path(model)
    regular_file(path, "model")
    manifest = {MODEL_FILE: file_sha256(path)}
    for location in external_data_files(path):
        target = path.parent / location
        for folder in list(target.parents)[: len(PurePosixPath(location).parts) - 1]:
            if folder.is_symlink():  # a symlinked folder would lead the location out of the model's directory
                raise InvalidInputError(f"external data of {path.name}: {folder} is a symbolic link; copy the files instead")
        regular_file(target, f"external data of {path.name}:")
        manifest[location] = file_sha256(target)
    return manifest


def check_manifest(value: Any, source: str) -> Manifest:
    if (
        not isinstance(value, dict)
        or MODEL_FILE not in value
        or not all(isinstance(k, str) and isinstance(v, str) and HEX64.match(v) for k, v in value.items())
    ):
        raise InvalidInputError(
            f"{source} has no valid file manifest (an object mapping '{MODEL_FILE}' and each external-data file "
            "to its sha256)"
        )
    return dict(value)


def copy_hashed(src: Path, dst: Path) -> str:
    """Copy a regular file without following a symlink; return the sha256 of the bytes copied."""
    digest = hashlib.sha256()
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as err:
        raise InvalidInputError(f"cannot read {src} ({err}); it must be a regular file, not a symbolic link") from None
    with os.fdopen(fd, "rb") as fin:
        if not stat.S_ISREG(os.fstat(fin.fileno()).st_mode):
            raise InvalidInputError(f"{src} is not a regular file")
        dst.parent.mkdir(parents=True, exist_ok=True)
        with open(dst, "wb") as fout:
            while block := fin.read(1 << 20):
                digest.update(block)
                fout.write(block)
            fout.flush()
            os.fsync(fout.fileno())
    os.chmod(dst, FILE_MODE)
    return digest.hexdigest()
