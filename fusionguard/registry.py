"""A filesystem model registry: the gate's `promote` writes it, the monitor reads `current`.

Layout::

    REGISTRY/
      versions/v0001/model.onnx  report.json  profile.json  meta.json
      current          text file holding the current version id, replaced atomically
      history.jsonl    one JSON line per promote / rollback
      .lock            flock'ed while a writer works

Atomicity: a promotion copies the model and the report into a temporary directory inside the
registry, fsyncs every file, checks the copy's sha256 against the report, renames the directory
into `versions/<id>/` and only then replaces `current` with `os.replace`. A crash at any point
leaves `current` naming a complete version (or nothing); a leftover `.tmp-*` directory is never
read and is cleaned up by the next writer.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fusionguard.errors import CheckFailedError, InvalidInputError

logger = logging.getLogger(__name__)

VERSION_PATTERN = re.compile(r"^v(\d{4,})$")
MODEL_FILE = "model.onnx"
REPORT_FILE = "report.json"
PROFILE_FILE = "profile.json"
META_FILE = "meta.json"


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


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

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def report_path(self) -> Path:
        return self.path / REPORT_FILE

    @property
    def profile_path(self) -> Path | None:
        p = self.path / PROFILE_FILE
        return p if p.is_file() else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "path": str(self.path),
            "sha256": self.sha256,
            "promoted_at": self.promoted_at,
            "source": self.source,
            "variant": self.variant,
            "is_current": self.is_current,
        }


def read_report(report_dir: str | Path) -> dict[str, Any]:
    """The parsed `report.json` of a gate run.

    Raises:
        InvalidInputError: missing or unreadable report (exit 2).
    """
    path = Path(report_dir) / REPORT_FILE
    if not path.is_file():
        raise InvalidInputError(f"no gate report at {path}; run `fusionguard gate ... --out {report_dir}` first")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InvalidInputError(f"gate report {path} is unreadable ({err}); rerun the gate") from None
    if not isinstance(data, dict) or not isinstance(data.get("candidate"), dict):
        raise InvalidInputError(f"gate report {path} has no 'candidate' section; it was not written by `fusionguard gate`")
    return data


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Registry:
    """A versioned model registry on the filesystem (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        self.current_file = self.root / "current"
        self.history_file = self.root / "history.jsonl"

    # ----- reading -------------------------------------------------------------------------------
    def _read_version(self, version: str, current: str | None) -> VersionInfo:
        path = self.versions_dir / version
        meta_path = path / META_FILE
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise InvalidInputError(f"registry version {path} has no readable {META_FILE} ({err})") from None
        return VersionInfo(
            version=version,
            path=path,
            sha256=str(meta.get("sha256", "")),
            promoted_at=str(meta.get("promoted_at", "")),
            source=str(meta.get("source", "")),
            variant=str(meta.get("variant", "unknown")),
            is_current=version == current,
        )

    def _current_id(self) -> str | None:
        try:
            text = self.current_file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return text or None

    def versions(self) -> list[VersionInfo]:
        """Every promoted version, oldest first (an empty list for a registry not yet created)."""
        if not self.versions_dir.is_dir():
            return []
        current = self._current_id()
        ids = sorted(
            (p.name for p in self.versions_dir.iterdir() if p.is_dir() and VERSION_PATTERN.match(p.name)),
            key=lambda name: int(name[1:]),
        )
        return [self._read_version(v, current) for v in ids]

    def get(self, version: str) -> VersionInfo:
        """One version by id. Raises InvalidInputError when it does not exist."""
        if not VERSION_PATTERN.match(version) or not (self.versions_dir / version).is_dir():
            known = [v.version for v in self.versions()]
            raise InvalidInputError(f"registry {self.root} has no version '{version}'; versions: {known or 'none'}")
        return self._read_version(version, self._current_id())

    def current(self) -> VersionInfo | None:
        """The current version, or None when nothing was promoted yet.

        Raises:
            InvalidInputError: `current` names a version that does not exist (a damaged registry).
        """
        current = self._current_id()
        if current is None:
            return None
        if not (self.versions_dir / current / META_FILE).is_file():
            raise InvalidInputError(
                f"registry {self.root}: 'current' names version '{current}', which is missing; "
                "roll back to an existing version with `fusionguard registry rollback --to VERSION`"
            )
        return self._read_version(current, current)

    def current_model_path(self) -> Path | None:
        """Path of the current model file, or None when nothing was promoted yet."""
        info = self.current()
        return None if info is None else info.model_path

    def history(self) -> list[dict[str, Any]]:
        """The history log, oldest first."""
        if not self.history_file.is_file():
            return []
        return [json.loads(line) for line in self.history_file.read_text(encoding="utf-8").splitlines() if line.strip()]

    # ----- writing -------------------------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                for stale in self.root.glob(".tmp-*"):
                    shutil.rmtree(stale, ignore_errors=True)
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _set_current(self, version: str) -> None:
        tmp = self.root / f".current.{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(version + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.current_file)
        _fsync_path(self.root)

    def _log(self, entry: dict[str, Any]) -> None:
        with open(self.history_file, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def _next_id(self) -> str:
        numbers = [int(p.name[1:]) for p in self.versions_dir.iterdir() if VERSION_PATTERN.match(p.name)]
        return f"v{max(numbers, default=0) + 1:04d}"

    def promote(self, model_path: str | Path | None, report_dir: str | Path) -> VersionInfo:
        """Promote the model a passing gate report describes and make it current.

        Args:
            model_path: the model file; None takes the candidate path recorded in the report.
            report_dir: the gate's output directory (report.json, optional profile.json).
        Returns:
            The new current version.
        Raises:
            InvalidInputError: missing/unreadable report or model (exit 2).
            CheckFailedError: the report did not pass, or the model's sha256 differs from the one
                the gate evaluated (exit 1). Nothing is written in either case.
        """
        report_dir = Path(report_dir)
        report = read_report(report_dir)
        candidate = report["candidate"]
        model = Path(model_path) if model_path is not None else Path(str(candidate.get("path", "")))
        if not model.is_file():
            raise InvalidInputError(f"model {model} does not exist; pass the candidate the gate evaluated")
        outcome = report.get("outcome")
        if outcome != "passed" or report.get("exit_code") != 0:
            failed = [c.get("name") for c in report.get("checks", []) if c.get("outcome") != "passed" and c.get("outcome") != "skipped"]
            raise CheckFailedError(
                f"refusing to promote {model}: the gate report in {report_dir} says '{outcome}'"
                + (f" (checks not passed: {', '.join(map(str, failed))})" if failed else "")
                + "; only a passing candidate can be promoted"
            )
        expected = str(candidate.get("sha256", ""))
        actual = file_sha256(model)
        if actual != expected:
            raise CheckFailedError(
                f"refusing to promote {model}: its sha256 {actual[:12]}… differs from the {expected[:12]}… the gate "
                "evaluated; the file changed since the gate ran, so gate it again"
            )
        with self._locked():
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))
            try:
                shutil.copyfile(model, tmp / MODEL_FILE)
                copied = file_sha256(tmp / MODEL_FILE)
                if copied != expected:
                    raise CheckFailedError(
                        f"refusing to promote {model}: the copy in the registry hashes to {copied[:12]}…, not "
                        f"{expected[:12]}…; the file changed during the copy, so gate it again"
                    )
                shutil.copyfile(report_dir / REPORT_FILE, tmp / REPORT_FILE)
                if (report_dir / PROFILE_FILE).is_file():
                    shutil.copyfile(report_dir / PROFILE_FILE, tmp / PROFILE_FILE)
                version = self._next_id()
                meta = {
                    "version": version,
                    "sha256": expected,
                    "promoted_at": _now(),
                    "source": str(model.resolve()),
                    "variant": str(candidate.get("variant", "unknown")),
                    "report_dir": str(report_dir.resolve()),
                }
                (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
                for f in tmp.iterdir():
                    _fsync_path(f)
                _fsync_path(tmp)
                os.rename(tmp, self.versions_dir / version)
                _fsync_path(self.versions_dir)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            previous = self._current_id()
            self._set_current(version)
            self._log({"action": "promote", "version": version, "previous": previous, "sha256": expected, "at": meta["promoted_at"]})
        logger.info("promoted %s as %s in %s", model, version, self.root)
        return self._read_version(version, version)

    def rollback(self, version: str | None = None) -> VersionInfo:
        """Make an earlier version current.

        Args:
            version: the version to make current; None picks the newest version older than the
                current one.
        Raises:
            InvalidInputError: no such version, or nothing older to roll back to (exit 2).
        """
        with self._locked():
            current = self._current_id()
            if version is None:
                if current is None:
                    raise InvalidInputError(f"registry {self.root} has no current version; nothing to roll back")
                older = [v.version for v in self.versions() if int(v.version[1:]) < int(current[1:])]
                if not older:
                    raise InvalidInputError(
                        f"registry {self.root}: {current} is the oldest version; nothing older to roll back to"
                    )
                version = older[-1]
            target = self.get(version)
            self._set_current(target.version)
            self._log({"action": "rollback", "version": target.version, "previous": current, "sha256": target.sha256, "at": _now()})
        logger.info("rolled %s back to %s", self.root, version)
        return self._read_version(target.version, target.version)
