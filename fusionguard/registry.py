"""A filesystem model registry: the gate's `promote` writes it, the monitor reads `current`.

Layout::

    REGISTRY/
      versions/v0001/model.onnx  [external data files]  report.json  profile.json  meta.json
      current          text file holding the current version id, replaced atomically
      history.jsonl    one JSON line per promote / rollback
      .lock            flock'ed while a writer works

Trust: a promotion copies the model *with every ONNX external-data file it references* and
hashes the bytes it copies; meta.json records the manifest (sha256 per file). Whatever serves,
reloads, shows or rolls back to a version goes through `Registry.verified`, which re-hashes the
files against that manifest, so a model swapped after promotion is refused, not served.
`current` must hold one version id matching `VERSION_PATTERN` that names a real (not symlinked)
directory under `versions/`. Every corruption is an `InvalidInputError` (exit 2) that says what
is wrong and how to repair it, never a traceback.

Permissions: version directories are 0755 and their files 0644 whatever the writer's umask, so
a container running as another uid can serve what CI promoted.

Atomicity: a promotion writes into a temporary directory inside the registry, fsyncs every file,
renames the directory into `versions/<id>/` and only then replaces `current` with `os.replace`.
A crash at any point leaves `current` naming a complete version (or nothing); a leftover
`.tmp-*` directory is never read and is cleaned up by the next writer.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from fusionguard import jsonio
from fusionguard.errors import CheckFailedError, FusionGuardError, InvalidInputError
from fusionguard.modelfiles import (  # re-exported: callers import these from the registry
    FILE_MODE,
    HEX64,
    MODEL_FILE,
    Manifest,
    check_manifest,
    copy_hashed,
    external_data_files,
    file_sha256,
    model_manifest,
    regular_file,
)

__all__ = [
    "META_FILE", "MODEL_FILE", "PROFILE_FILE", "REPORT_FILE", "VERSION_PATTERN", "Registry", "VersionInfo",
    "Verdict", "external_data_files", "file_sha256", "model_manifest",
]

logger = logging.getLogger(__name__)

VERSION_PATTERN = re.compile(r"^v(\d{4,9})$")
REPORT_FILE = "report.json"
PROFILE_FILE = "profile.json"
META_FILE = "meta.json"
DIR_MODE = 0o755
MAX_CURRENT_BYTES = 64  # `current` holds one version id and a newline



@dataclass(frozen=True)
class Verdict:
    """The gate's decision about one candidate, as promotion needs it (`fusionguard.gate.promotion` builds it
    from a gate report; the registry never reads the report's format).

    A registry refuses a verdict that did not pass, and a model whose files differ from
    `model_files`; it copies `evidence` (the report file) into the version and checks that the
    bytes it copied hash to `evidence_sha256`.
    """

    passed: bool
    reason: str  # why it did not pass, as the refusal says it ("" when it passed)
    source: str  # where the evidence lies, for messages: "gate report DIR/report.json"
    model_files: Manifest  # model.onnx and each external-data file the gate evaluated -> sha256
    model_path: str | None  # the candidate path the gate recorded (used when no model is given)
    variant: str  # the candidate's variant, recorded in meta.json
    signed: bool  # the evidence was signed and its signature verified
    evidence: Path  # the report file copied into the version as report.json
    evidence_sha256: str  # of the evidence bytes the verdict was read from
    profile: Path | None = None  # reference profile to install next to the model


# ----- versions ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class VersionInfo:
    """One promoted version."""

    version: str  # "v0001", ...
    path: Path  # versions/<version>/
    sha256: str  # of model.onnx
    promoted_at: str  # ISO 8601, UTC
    source: str  # the model path it was promoted from
    variant: str = "unknown"  # from the report's candidate contract
    is_current: bool = False
    files: Manifest = field(default_factory=dict)  # model.onnx and external data -> sha256
    report_sha256: str | None = None  # of report.json as promoted (None in registries before manifests)

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def report_path(self) -> Path:
        return self.path / REPORT_FILE

    @property
    def profile_path(self) -> Path | None:
        p = self.path / PROFILE_FILE
        return p if p.is_file() and not p.is_symlink() else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "path": str(self.path),
            "sha256": self.sha256,
            "files": dict(self.files),
            "promoted_at": self.promoted_at,
            "source": self.source,
            "variant": self.variant,
            "is_current": self.is_current,
        }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Registry:
    """A versioned model registry on the filesystem (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        self.current_file = self.root / "current"
        self.history_file = self.root / "history.jsonl"

    def _corrupt(self, what: str, fix: str = "") -> InvalidInputError:
        return InvalidInputError(f"registry {self.root} is damaged: {what}" + (f"; {fix}" if fix else ""))

    # ----- reading -------------------------------------------------------------------------------
    def _check_root(self) -> bool:
        """False when the registry does not exist yet; raises when the path is not a directory."""
        if not self.root.exists() and not self.root.is_symlink():
            return False
        if not self.root.is_dir():
            raise InvalidInputError(f"registry path {self.root} is not a directory; pass the registry directory")
        if self.versions_dir.exists() and (self.versions_dir.is_symlink() or not self.versions_dir.is_dir()):
            raise self._corrupt(f"{self.versions_dir} is not a plain directory")
        return True

    def _version_dir(self, version: str) -> Path:
        """versions/<version>, which must be a real directory (not a symlink)."""
        path = self.versions_dir / version
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise InvalidInputError(f"registry {self.root} has no version '{version}'; versions: {self._ids() or 'none'}") from None
        except OSError as err:
            raise self._corrupt(f"cannot read {path} ({err})") from None
        if not stat.S_ISDIR(st.st_mode):
            raise self._corrupt(f"{path} is not a plain directory (a symlink or a file)", "remove it")
        return path

    def _read_version(self, version: str, current: str | None) -> VersionInfo:
        if not VERSION_PATTERN.match(version):
            raise InvalidInputError(f"'{version}' is not a version id (v0001, v0002, ...)")
        path = self._version_dir(version)
        meta_path = path / META_FILE
        regular_file(meta_path, f"registry {self.root}: version metadata")
        try:
            raw = meta_path.read_bytes()
        except OSError as err:
            raise self._corrupt(f"{meta_path} is unreadable ({err})") from None
        meta = jsonio.loads(raw, f"registry version metadata {meta_path}")
        if not isinstance(meta, dict):
            raise self._corrupt(f"{meta_path} is not a JSON object", f"roll back to another version")
        sha = meta.get("sha256")
        if not isinstance(sha, str) or not HEX64.match(sha):
            raise self._corrupt(f"{meta_path} has no valid sha256", "roll back to another version")
        files = meta.get("files", {MODEL_FILE: sha})  # registries before manifests recorded the model only
        files = check_manifest(files, str(meta_path))
        if files[MODEL_FILE] != sha:
            raise self._corrupt(f"{meta_path}: sha256 and the manifest disagree", "roll back to another version")
        report_sha = meta.get("report_sha256")
        if report_sha is not None and (not isinstance(report_sha, str) or not HEX64.match(report_sha)):
            raise self._corrupt(f"{meta_path} has an invalid report_sha256")
        return VersionInfo(
            version=version,
            path=path,
            sha256=sha,
            promoted_at=str(meta.get("promoted_at", "")),
            source=str(meta.get("source", "")),
            variant=str(meta.get("variant", "unknown")),
            is_current=version == current,
            files=files,
            report_sha256=report_sha,
        )

    def _current_id(self, *, strict: bool = True) -> str | None:
        """The id in `current`; None when there is none. With strict=False a damaged `current`
        reads as None (used by writers, which replace it)."""
        try:
            st = os.lstat(self.current_file)
        except FileNotFoundError:
            return None
        except OSError as err:
            if not strict:
                return None
            raise self._corrupt(f"cannot read {self.current_file} ({err})") from None
        fix = "make a version current again with `fusionguard registry rollback --to VERSION`"
        try:
            if not stat.S_ISREG(st.st_mode):
                raise self._corrupt(f"{self.current_file} is not a regular file", fix)
            if st.st_size > MAX_CURRENT_BYTES:
                raise self._corrupt(f"{self.current_file} holds {st.st_size} bytes, not one version id", fix)
            try:
                text = self.current_file.read_bytes().decode("ascii").strip()
            except UnicodeDecodeError:
                raise self._corrupt(f"{self.current_file} holds non-text bytes, not a version id", fix) from None
            except OSError as err:
                raise self._corrupt(f"cannot read {self.current_file} ({err})") from None
            if not text:
                return None
            if not VERSION_PATTERN.match(text):
                raise self._corrupt(f"{self.current_file} holds {text[:40]!r}, not a version id like v0001", fix)
            if not (self.versions_dir / text).is_dir() or (self.versions_dir / text).is_symlink():
                raise self._corrupt(f"'current' names version '{text}', which is missing", fix)
        except InvalidInputError:
            if strict:
                raise
            return None
        return text

    def _ids(self) -> list[str]:
        if not self.versions_dir.is_dir():
            return []
        try:
            entries = list(self.versions_dir.iterdir())
        except OSError as err:
            raise self._corrupt(f"cannot list {self.versions_dir} ({err})") from None
        ids = [p.name for p in entries if VERSION_PATTERN.match(p.name) and p.is_dir() and not p.is_symlink()]
        return sorted(ids, key=lambda name: int(name[1:]))

    def versions(self) -> list[VersionInfo]:
        """Every promoted version, oldest first (an empty list for a registry not yet created)."""
        if not self._check_root():
            return []
        current = self._current_id()
        return [self._read_version(v, current) for v in self._ids()]

    def get(self, version: str) -> VersionInfo:
        """One version by id (metadata only, files not re-hashed). Raises InvalidInputError when it
        does not exist."""
        if not self._check_root() or not VERSION_PATTERN.match(version) or not (self.versions_dir / version).is_dir():
            known = self._ids() if self.root.is_dir() else []
            raise InvalidInputError(f"registry {self.root} has no version '{version}'; versions: {known or 'none'}")
        return self._read_version(version, self._current_id(strict=False))

    def current(self) -> VersionInfo | None:
        """The current version's metadata, or None when nothing was promoted yet.

        Raises:
            InvalidInputError: `current` is damaged or names a version that does not exist.
        """
        if not self._check_root():
            return None
        current = self._current_id()
        if current is None:
            return None
        return self._read_version(current, current)

    def verify(self, info: VersionInfo) -> VersionInfo:
        """Re-hash a version's files against its meta.json manifest.

        Checks that model.onnx references exactly the external-data files of the manifest, that
        none is a symlink, that each hashes to the recorded sha256, and that report.json is the
        one promoted. Returns `info` unchanged.

        Raises:
            InvalidInputError: any file differs, is missing or is a symlink (exit 2).
        """
        fix = "roll back to a good version with `fusionguard registry rollback --to VERSION`, or promote again"
        try:
            actual = model_manifest(info.model_path)
        except InvalidInputError as err:
            raise self._corrupt(f"version {info.version}: {err}", fix) from None
        if actual != info.files:
            changed = sorted(k for k in set(actual) | set(info.files) if actual.get(k) != info.files.get(k))
            raise self._corrupt(
                f"version {info.version}: {', '.join(changed)} no longer match{'es' if len(changed) == 1 else ''} "
                f"the sha256 recorded in {META_FILE} at promotion; the files were changed after promotion",
                fix,
            )
        if info.report_sha256 is not None:
            try:
                regular_file(info.report_path, "report")
                ok = file_sha256(info.report_path) == info.report_sha256
            except (InvalidInputError, OSError):
                ok = False
            if not ok:
                raise self._corrupt(f"version {info.version}: {REPORT_FILE} is not the report it was promoted with", fix)
        profile = info.path / PROFILE_FILE
        if profile.is_symlink():
            raise self._corrupt(f"version {info.version}: {PROFILE_FILE} is a symbolic link", fix)
        return info

    def verified(self, version: str | None = None) -> VersionInfo | None:
        """A version (default: the current one) after `verify`; None when nothing is current.

        This is the loading path of everything that serves a model (the monitor, hot reload).
        """
        info = self.current() if version is None else self.get(version)
        return None if info is None else self.verify(info)

    def current_model_path(self) -> Path | None:
        """Path of the current model file after verification, or None when nothing was promoted yet."""
        info = self.verified()
        return None if info is None else info.model_path

    def history(self) -> list[dict[str, Any]]:
        """The history log, oldest first."""
        if not self._check_root() or not self.history_file.is_file():
            return []
        try:
            lines = self.history_file.read_bytes().decode("utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise self._corrupt(f"{self.history_file} is unreadable ({err})") from None
        return [jsonio.loads(line, f"a line of {self.history_file}") for line in lines if line.strip()]

    # ----- writing -------------------------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self._check_root()
            for d in (self.root, self.versions_dir):
                if not d.exists():
                    d.mkdir(parents=True, exist_ok=True)
                    os.chmod(d, DIR_MODE)
            self._check_root()
            lock = open(self.root / ".lock", "a+")
        except FusionGuardError:
            raise
        except OSError as err:
            raise InvalidInputError(
                f"registry {self.root} is not a writable directory ({err}); pass a directory this user can write"
            ) from None
        with lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                for stale in self.root.glob(".tmp-*"):
                    shutil.rmtree(stale, ignore_errors=True)
                yield
            except OSError as err:
                raise InvalidInputError(f"registry {self.root} could not be written ({err}); nothing was changed") from None
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _set_current(self, version: str) -> None:
        tmp = self.root / f".current.{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(version + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, self.current_file)
        _fsync_path(self.root)

    def _log(self, entry: dict[str, Any]) -> None:
        with open(self.history_file, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(self.history_file, FILE_MODE)

    def _next_id(self) -> str:
        numbers = [int(p.name[1:]) for p in self.versions_dir.iterdir() if VERSION_PATTERN.match(p.name)]
        return f"v{max(numbers, default=0) + 1:04d}"

    def promote(self, model_path: str | Path | None, verdict: Verdict) -> VersionInfo:
        """Promote the model a passing verdict describes and make it current.

        The decision rests on evidence: the verdict must have passed (`fusionguard.gate.promotion.read_verdict`
        re-validates the report's signature and every recorded number before it says so), and the
        model's files (model.onnx and every external-data file) must hash to the verdict's
        manifest. The bytes copied into the registry are hashed again while they are copied.

        Args:
            model_path: the model file; None takes the candidate path the verdict records.
            verdict: the gate's verdict on the candidate.
        Returns:
            The new current version.
        Raises:
            InvalidInputError: a missing or unreadable model, symlinks, an unwritable registry (exit 2).
            CheckFailedError: the verdict did not pass, or the model's files differ from those the
                gate evaluated (exit 1). Nothing is written in either case.
        """
        if not verdict.passed:
            raise CheckFailedError(verdict.reason)
        source = verdict.source
        expected = dict(verdict.model_files)
        if model_path is None and verdict.model_path is None:
            raise InvalidInputError(f"{source} records no candidate path; pass --model")
        model = Path(model_path) if model_path is not None else Path(str(verdict.model_path))
        actual = model_manifest(model)
        if actual != expected:
            changed = sorted(k for k in set(actual) | set(expected) if actual.get(k) != expected.get(k))
            raise CheckFailedError(
                f"refusing to promote {model}: {', '.join(changed)} differ{'s' if len(changed) == 1 else ''} from the "
                "files the gate evaluated (sha256 manifest in the report); the model changed since the gate ran, or "
                "it is another model: gate it again"
            )
        profile_src = verdict.profile
        if profile_src is not None and profile_src.is_symlink():
            raise InvalidInputError(f"{profile_src} is a symbolic link; the gate writes profile.json as a regular file")
        if profile_src is not None and profile_src.exists():
            from fusionguard.profile import ReferenceProfile

            profile = ReferenceProfile.read(profile_src)
            if profile.model_sha256 != expected[MODEL_FILE]:
                raise CheckFailedError(f"refusing to promote: {profile_src} describes another model than the report")

        with self._locked():
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))
            os.chmod(tmp, DIR_MODE)
            try:
                for name, sha in expected.items():
                    src = model if name == MODEL_FILE else model.parent / name
                    copied = copy_hashed(src, tmp / name)
                    if copied != sha:
                        raise CheckFailedError(
                            f"refusing to promote {model}: the copy of {name} hashes to {copied[:12]}…, not "
                            f"{sha[:12]}…; the file changed during the copy, so gate it again"
                        )
                for folder in {parent for name in expected for parent in PurePosixPath(name).parents} - {PurePosixPath(".")}:
                    os.chmod(tmp / folder, DIR_MODE)  # mkdir honoured the umask; the serving uid must enter
                report_sha = copy_hashed(verdict.evidence, tmp / REPORT_FILE)
                if report_sha != verdict.evidence_sha256:
                    raise CheckFailedError(f"refusing to promote: {source} changed while it was being promoted")
                if profile_src is not None and profile_src.exists():
                    copy_hashed(profile_src, tmp / PROFILE_FILE)
                version = self._next_id()
                meta = {
                    "version": version,
                    "sha256": expected[MODEL_FILE],
                    "files": expected,
                    "report_sha256": report_sha,
                    "signed": verdict.signed,
                    "promoted_at": _now(),
                    "source": str(model.resolve()),
                    "variant": verdict.variant,
                    "report_dir": str(verdict.evidence.parent.resolve()),
                }
                (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
                os.chmod(tmp / META_FILE, FILE_MODE)
                _fsync_path(tmp / META_FILE)
                _fsync_path(tmp)
                os.rename(tmp, self.versions_dir / version)
                _fsync_path(self.versions_dir)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            previous = self._current_id(strict=False)
            self._set_current(version)
            self._log({"action": "promote", "version": version, "previous": previous, "sha256": expected[MODEL_FILE], "at": meta["promoted_at"]})
        logger.info("promoted %s as %s in %s", model, version, self.root)
        return self._read_version(version, version)

    def rollback(self, version: str | None = None) -> VersionInfo:
        """Make an earlier version current, after verifying its files.

        Args:
            version: the version to make current; None picks the newest version older than the
                current one. With an explicit version a damaged `current` is repaired.
        Raises:
            InvalidInputError: no such version, nothing older, or the target is damaged (exit 2).
        """
        with self._locked():
            current = self._current_id(strict=version is None)
            if version is None:
                if current is None:
                    raise InvalidInputError(f"registry {self.root} has no current version; nothing to roll back")
                older = [v for v in self._ids() if int(v[1:]) < int(current[1:])]
                if not older:
                    raise InvalidInputError(
                        f"registry {self.root}: {current} is the oldest version; nothing older to roll back to"
                    )
                version = older[-1]
            target = self.verify(self.get(version))
            self._set_current(target.version)
            self._log({"action": "rollback", "version": target.version, "previous": current, "sha256": target.sha256, "at": _now()})
        logger.info("rolled %s back to %s", self.root, version)
        return self._read_version(target.version, target.version)
