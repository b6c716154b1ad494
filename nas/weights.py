"""Trained weights in Optuna's artifact store: where it is, and saving, checked loading and
removing a run's safetensors file. The one module that talks to `optuna.artifacts`.

A run row (`db.RunRecord`) holds only the artifact id, the size and the sha256 of its weights;
the bytes live in a directory or an S3 bucket (`--artifacts`), linked from the Optuna trial so
that optuna-dashboard lists them. Runs recorded before that kept their weights in the SQL
table `nas_weights`, which `Artifacts.load` still reads.

Where the artifact store is, first match wins:

1. the location given (`--artifacts`, `NAS_ARTIFACTS`, `SearchConfig.artifacts`): a directory
   (`~` expanded, created) or `s3://bucket/prefix` (boto3, credentials from its usual places);
2. the location recorded in the store's `nas_meta` (key `artifact_store`) when weights were
   first saved, so that `nas export` / `nas retrain` on the same database need no flag;
3. the default: beside a SQLite file (`nas.db` -> `nas.db.artifacts/`); for PostgreSQL,
   `$XDG_DATA_HOME/resnas/artifacts/<host>-<port>-<database>` (`~/.local/share` without it).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any, BinaryIO

from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound

from db import RunRecord, Store
from nas.errors import UserError, mask_url

__all__ = ["META_KEY", "Artifacts", "WeightsError", "check_safetensors", "default_location"]

logger = logging.getLogger(__name__)

META_KEY = "artifact_store"  # in `nas_meta`: the location weights were first saved to
MIMETYPE = "application/octet-stream"
OPTION = "`--artifacts`"
# safetensors itself refuses headers above 100 MB; a larger length is a damaged file, and
# trusting it would mean allocating that much.
MAX_HEADER_BYTES = 100_000_000


class WeightsError(UserError):
    """A run's weights are missing from the artifact store, or are not what the store recorded."""


# -- the safetensors check -----------------------------------------------------------------------
def check_safetensors(data: bytes) -> None:
    """Raise `ValueError` (one line) unless `data` is a whole safetensors file: an 8-byte
    little-endian header length that fits, a JSON object header, and tensors whose data offsets
    cover the body exactly. Reads the header only; no tensor is built."""
    if len(data) < 8:
        raise ValueError(f"{len(data)} bytes, too short for the 8-byte header length")
    length = int.from_bytes(data[:8], "little")
    body = len(data) - 8 - length
    if length < 2 or length > MAX_HEADER_BYTES or body < 0:
        raise ValueError(f"a header length of {length} bytes does not fit in {len(data)} bytes")
    try:
        header = json.loads(data[8:8 + length])
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise ValueError("the header is not JSON") from None
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(type(o) is int for o in offsets) and 0 <= offsets[0] <= offsets[1]):
            raise ValueError(f"tensor {name[:80]!r} has no valid `data_offsets`")
        end = max(end, offsets[1])
    if end != body:
        raise ValueError(f"the tensors cover {end} bytes of a {body}-byte body")


# -- where the store is --------------------------------------------------------------------------
def _safe_name(text: str) -> str:
    """`text` as one file name: anything but letters, digits, `.`, `_`, `-` becomes `_`."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "_"


def default_location(storage_url: str) -> str | None:
    """The artifact directory of a database that recorded none (see the module docstring);
    None for an in-memory SQLite database (it gets a temporary directory)."""
    from sqlalchemy.engine import make_url

    url = make_url(storage_url)
    if url.get_backend_name() == "sqlite":
        database = url.database or ""
        if database in ("", ":memory:") or "mode=memory" in database \
                or url.query.get("mode") == "memory":
            return None
        if database.startswith("file:"):  # a URI filename (`?uri=true`)
            database = database[len("file:"):].split("?", 1)[0]
        db_file = Path(os.path.abspath(Path(database).expanduser()))
        return str(db_file.with_name(db_file.name + ".artifacts"))
    # XDG: a relative XDG_DATA_HOME is invalid and is ignored.
    data_home = os.environ.get("XDG_DATA_HOME", "")
    base = Path(data_home) if os.path.isabs(data_home) else Path("~/.local/share").expanduser()
    # host, port and database name only: never the user or the password.
    name = f"{url.host or 'localhost'}-{url.port or 5432}-{url.database or 'postgres'}"
    return str(base / "resnas" / "artifacts" / _safe_name(name))


class _Prefixed:
    """An artifact store whose ids live under `prefix` in `inner` (Boto3ArtifactStore keys
    artifacts by id alone, at the bucket's root)."""

    def __init__(self, inner: Any, prefix: str) -> None:
        self.inner, self.prefix = inner, prefix.strip("/") + "/"

    def open_reader(self, artifact_id: str) -> BinaryIO:
        return self.inner.open_reader(self.prefix + artifact_id)

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self.inner.write(self.prefix + artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        self.inner.remove(self.prefix + artifact_id)


def _s3_store(location: str) -> Any:
    """`s3://bucket/prefix` -> a Boto3ArtifactStore (under the prefix, if any)."""
    rest = location[len("s3://"):]
    bucket, _, prefix = rest.partition("/")
    if "@" in bucket:
        raise UserError(f"{OPTION} got {mask_url(location)!r}: credentials do not belong in the "
                        "location; boto3 reads them from its environment (AWS_ACCESS_KEY_ID, "
                        "AWS_PROFILE, ~/.aws)")
    if not bucket:
        raise UserError(f"{OPTION} got {location!r}: no bucket; allowed: s3://BUCKET/PREFIX")
    try:
        import boto3
    except ImportError:
        raise UserError(f"{OPTION} got {location!r}: an S3 artifact store needs boto3, which is "
                        "not installed (`pip install boto3`)") from None
    from optuna.artifacts import Boto3ArtifactStore

    inner = Boto3ArtifactStore(bucket, boto3.client("s3"))
    return _Prefixed(inner, prefix) if prefix.strip("/") else inner


def _backend_errors() -> tuple[type[BaseException], ...]:
    """What a failed read or write raises: OSError, and botocore's errors where it is loaded."""
    botocore = sys.modules.get("botocore.exceptions")  # loaded with boto3, if at all
    if botocore is None:
        return (OSError,)
    return (OSError, botocore.BotoCoreError, botocore.ClientError)


class Artifacts:
    """The artifact store of one database: saves, loads (checked) and removes run weights.

    Build it with `Artifacts.open`. Attributes: `backend` (the `optuna.artifacts` store, what
    optuna-dashboard is given), `location` (where it is, as messages and `nas_meta` say it;
    never a secret), `store` (the `db.Store` whose runs it serves).
    """

    def __init__(self, backend: Any, location: str, store: Store, *,
                 directory: Path | None = None, record: bool = True) -> None:
        self.backend = backend
        self.location = location
        self.store = store
        self._directory = directory  # a local directory, created on the first save
        self._record = record  # whether to record `location` in nas_meta (not a temporary one)
        self._prepared = False

    def __repr__(self) -> str:
        return f"Artifacts({self.location!r})"

    @classmethod
    def open(cls, storage_url: str, store: Store, location: str | None = None) -> Artifacts:
        """The artifact store for the database at `storage_url` (whose `Store` is `store`).

        Args:
            storage_url: the database URL (only its kind, file, host, port and name are used).
            store: the store its runs are in; its `nas_meta` says where weights were saved.
            location: a directory or `s3://bucket/prefix`; None: the recorded one, else the
                default (see the module docstring).

        Raises:
            UserError: a directory that cannot be created, a location that is neither a
                directory nor `s3://...`, S3 without boto3.
        """
        if location is not None and str(location).strip():
            return cls._at(str(location).strip(), store, create=True)
        recorded = store.meta(META_KEY)
        if recorded:
            return cls._at(recorded, store, create=False)
        default = default_location(storage_url)
        if default is None:  # an in-memory database: its weights go with it
            temporary = tempfile.mkdtemp(prefix="resnas-artifacts-")
            return cls(FileSystemArtifactStore(temporary), temporary, store,
                       directory=Path(temporary), record=False)
        path = Path(default)
        return cls(FileSystemArtifactStore(path), default, store, directory=path)

    @classmethod
    def _at(cls, location: str, store: Store, *, create: bool) -> Artifacts:
        if location.startswith("s3://"):
            return cls(_s3_store(location), location, store)  # credentials were refused
        if "://" in location:
            raise UserError(f"{OPTION} got {mask_url(location)!r}; allowed: a directory or "
                            "s3://BUCKET/PREFIX")
        path = Path(os.path.abspath(Path(location).expanduser()))
        artifacts = cls(FileSystemArtifactStore(path), str(path), store, directory=path)
        if create:
            artifacts._make_directory()
        return artifacts

    # -- writing --------------------------------------------------------------------------
    def _make_directory(self) -> None:
        if self._directory is None:
            return
        try:
            self._directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(
                f"cannot create the artifact directory {self._directory} for trained weights: "
                f"{exc.strerror or exc}; choose another with {OPTION}"
            ) from None

    def _prepare(self) -> None:
        """Before the first save: the directory exists, and `nas_meta` says where it is."""
        if self._prepared:
            return
        self._make_directory()
        if self._record:
            recorded = self.store.meta(META_KEY)
            if recorded is None:
                self.store.set_meta(META_KEY, self.location)
            elif recorded != self.location:
                # The first location stays the default of `nas export`; weights saved here
                # are found with this `--artifacts` only.
                logger.warning("saving weights to %s; this store recorded %s, so reading them "
                               "back needs `--artifacts %s`", self.location, recorded,
                               self.location)
        self._prepared = True

    def save(self, data: bytes, *, trial: Any = None, study: Any = None,
             arch_id: str) -> dict[str, Any]:
        """Write safetensors bytes `data` as an artifact; returns the `RunRecord` fields that
        point to it (`weights_artifact`, `weights_size`, `weights_sha256`).

        Args:
            data: the safetensors file, as bytes.
            trial: the Optuna trial (`optuna.trial.Trial`) to link it from, so optuna-dashboard
                lists it among the trial's artifacts; else `study` (`optuna.Study`), else
                unlinked (a retrain has no Optuna trial).
            arch_id: names the file (`model-<arch_id>.safetensors`) where it is linked.

        Raises:
            ValueError: `data` is not a safetensors file (nothing is written).
            UserError: the artifact store cannot be written (the message names it).
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ValueError(f"`data` got {type(data).__name__}; allowed: bytes")
        data = bytes(data)
        try:
            check_safetensors(data)
        except ValueError as exc:
            raise ValueError(f"the weights of {arch_id} are not a safetensors file: {exc}") from None
        self._prepare()
        owner = trial if trial is not None else study
        try:
            artifact_id = self._upload(data, owner, arch_id) if owner is not None else None
            if artifact_id is None:
                artifact_id = str(uuid.uuid4())
                self.backend.write(artifact_id, io.BytesIO(data))
        except _backend_errors() as exc:
            raise UserError(f"cannot write trained weights to the artifact store {self.location}: "
                            f"{_reason(exc)}; choose another with {OPTION}") from None
        return {"weights_artifact": artifact_id, "weights_size": len(data),
                "weights_sha256": hashlib.sha256(data).hexdigest()}

    def _upload(self, data: bytes, owner: Any, arch_id: str) -> str | None:
        """`upload_artifact` from a temporary file; None when Optuna refuses the link (the
        trial has already finished), so that the weights are still written, unlinked."""
        from optuna.exceptions import UpdateFinishedTrialError

        with tempfile.TemporaryDirectory(prefix="resnas-weights-") as tmp:
            path = Path(tmp) / f"model-{_safe_name(arch_id)}.safetensors"
            path.write_bytes(data)
            try:
                return upload_artifact(artifact_store=self.backend, file_path=str(path),
                                       study_or_trial=owner, mimetype=MIMETYPE)
            except UpdateFinishedTrialError:
                logger.warning("weights of %s saved without a link from its Optuna trial, which "
                               "has already finished", arch_id)
                return None

    # -- reading --------------------------------------------------------------------------
    def load(self, run: RunRecord) -> bytes | None:
        """The safetensors bytes of `run`: from the artifact store when it has an artifact
        (checked against the size and sha256 the store recorded), else from the old
        `nas_weights` table, else None.

        Raises:
            WeightsError: the artifact is missing, unreadable, or not the bytes recorded.
        """
        if run.weights_artifact:
            return self._read(run)
        if run.id is None:
            return None
        return self.store.weights(run.id)

    def _read(self, run: RunRecord) -> bytes:
        artifact = run.weights_artifact
        where = (f"the weights of run {run.id} (trial {run.trial_number} of study {run.study!r}) "
                 f"in the artifact store {self.location}")

        def fail(problem: str) -> WeightsError:
            return WeightsError(f"{where}: {problem}")

        size, digest = run.weights_size, run.weights_sha256
        if size is None or digest is None:
            raise fail(f"the store recorded no size or sha256 for artifact {artifact}")
        try:
            reader = self.backend.open_reader(artifact)
        except ArtifactNotFound:
            raise fail(f"artifact {artifact} is missing; if the weights were saved elsewhere, "
                       f"say where with {OPTION}") from None
        except ValueError:  # an id that is not a plain file name
            raise fail(f"artifact id {artifact!r} is not valid") from None
        except _backend_errors() as exc:
            raise fail(f"cannot read artifact {artifact}: {_reason(exc)}") from None
        try:
            with contextlib.closing(reader):
                data = _read_at_most(reader, size + 1)  # one byte more tells a longer file
        except _backend_errors() as exc:
            raise fail(f"cannot read artifact {artifact}: {_reason(exc)}") from None
        if len(data) != size:
            changed = "is longer than" if len(data) > size else f"holds {len(data)} bytes, not"
            raise fail(f"artifact {artifact} {changed} the {size} bytes recorded "
                       "(truncated or replaced since it was saved)")
        if hashlib.sha256(data).hexdigest() != digest:
            raise fail(f"artifact {artifact} does not match its recorded sha256 "
                       "(changed since it was saved)")
        try:
            check_safetensors(data)
        except ValueError as exc:
            raise fail(f"artifact {artifact} is not a safetensors file: {exc}") from None
        return data

    # -- removing -------------------------------------------------------------------------
    def remove(self, run: RunRecord) -> bool:
        """Remove `run`'s weights artifact; False when it has none or it is already gone."""
        if not run.weights_artifact:
            return False
        try:
            self.backend.remove(run.weights_artifact)
        except ArtifactNotFound:
            return False
        except ValueError:  # not a plain file name: nothing of ours to remove
            return False
        except _backend_errors() as exc:
            raise UserError(f"cannot remove artifact {run.weights_artifact} from the artifact "
                            f"store {self.location}: {_reason(exc)}") from None
        return True


def _read_at_most(reader: BinaryIO, limit: int) -> bytes:
    """Up to `limit` bytes (a stream's `read(n)` may return fewer before its end)."""
    chunks: list[bytes] = []
    left = limit
    while left > 0:
        chunk = reader.read(min(left, 16 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
