"""Reading records from JSONL / JSON / Parquet / `datasets`, and writing files atomically.

Every record comes with a location string (`pairs.jsonl:12`, `pairs.parquet:row 3`, `hub-id[train]:row 7`) so any
later validation error can name where the bad record is. Writers never leave a half-written file: they write a
temporary file in the same directory, fsync it, and rename it over the target.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import IO, Any, Literal

from wpo.errors import DataError, WpoError

log = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"


@dataclass
class SourceRecord:
    where: str
    data: dict[str, Any]


@dataclass
class BadRecordPolicy:
    """What to do with an invalid record: raise (naming file:line) or count a skip by reason and go on (logging each
    one, unless a check that sums them up reads the file first)."""

    mode: Literal["error", "skip"] = "error"
    skipped: Counter[str] = field(default_factory=Counter)
    log_skips: bool = True

    def reject(self, where: str, reason: str, message: str) -> None:
        if self.mode == "error":
            raise DataError(f"{where}: {message}")
        self.skip(where, reason, message)

    def skip(self, where: str, reason: str, message: str) -> None:
        """Skip regardless of mode: for records the recipe always drops (e.g. chosen identical to rejected)."""
        self.skipped[reason] += 1
        if self.log_skips:
            log.warning("skipped %s: %s", where, message)


def resolve_builtin(source: str) -> Path:
    """`builtin:NAME` names a data file shipped inside the package (`wpo/resources/NAME`)."""
    name = source.removeprefix(BUILTIN_PREFIX)
    path = Path(str(resources.files("wpo") / "resources" / name))
    if not path.is_file():
        available = sorted(p.name for p in Path(str(resources.files("wpo") / "resources")).iterdir() if p.is_file())
        raise DataError(f"{source}: no such built-in data file; available: {', '.join(available)}")
    return path


# Suffixes that make a source a file, never a hub id.
LOCAL_SUFFIXES = frozenset({".jsonl", ".json", ".parquet", ".arrow", ".csv", ".txt", ".gguf", ".safetensors", ".yaml"})


def looks_like_local_path(source: str) -> bool:
    """A source written as a path — `.`, `/` or `~` first, a file suffix, more than one `/` — is never a hub id
    (`owner/name`, `owner/name:split`), so a missing one is "no such file", not a hub look-up."""
    if source.startswith(("/", ".", "~")) or "\\" in source:
        return True
    name = source.partition(":")[0]  # a hub id may name a split after a colon
    return name.count("/") > 1 or Path(name).suffix.lower() in LOCAL_SUFFIXES


def resolve_local(source: str) -> Path | None:
    """The local file or directory `source` names; None for a hub id. A path that does not exist is an error."""
    if source.startswith(BUILTIN_PREFIX):
        return resolve_builtin(source)
    path = Path(source).expanduser()
    if path.exists():
        return path
    if looks_like_local_path(source):
        raise DataError(f"no such file or directory: {source}")
    return None


def read_records(source: str, policy: BadRecordPolicy | None = None) -> Iterator[SourceRecord]:
    """Yield the records of a JSONL/JSON/Parquet file, a `datasets` directory, or a hub id (`id` or `id:split`)."""
    policy = policy or BadRecordPolicy()
    path = resolve_local(source)
    if path is None:
        yield from _read_hub_dataset(source)
    elif path.is_dir():
        yield from _read_dataset_dir(path)
    elif path.suffix == ".parquet":
        yield from _read_parquet(path)
    elif path.suffix == ".json" and _starts_with_array(path):
        yield from _read_json_array(path, policy)
    else:
        yield from _read_jsonl(path, policy)


# A `\uD800`-`\uDFFF` escape: valid JSON, but alone it decodes to a surrogate that UTF-8 cannot encode.
SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _read_jsonl(path: Path, policy: BadRecordPolicy) -> Iterator[SourceRecord]:
    seen_a_line = False
    with path.open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            where = f"{path}:{line_number}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                seen_a_line = True
                policy.reject(where, "invalid_utf8", f"invalid UTF-8 at byte {exc.start}")
                continue
            if not text.strip():
                continue
            seen_a_line = True
            try:
                data = json.loads(text.rstrip("\r\n"))  # so an error's column is on this line, not past its end
            except json.JSONDecodeError as exc:
                policy.reject(where, "invalid_json", f"invalid JSON ({_json_problem(exc)})")
                continue
            except RecursionError:
                policy.reject(where, "invalid_json", "invalid JSON (nested too deeply)")
                continue
            except ValueError:  # an integer literal longer than Python's 4300-digit limit
                policy.reject(where, "invalid_json", "invalid JSON (a number too long to read)")
                continue
            if not isinstance(data, dict):
                policy.reject(where, "not_an_object", f"expected a JSON object, got {type(data).__name__}")
                continue
            if SURROGATE_ESCAPE.search(text) and not _encodable(data):
                policy.reject(where, "invalid_utf8", "invalid Unicode: an unpaired surrogate escape (\\uD800-\\uDFFF)")
                continue
            yield SourceRecord(where, data)
    if not seen_a_line:
        raise DataError(f"{path}: the file is empty (no records)")


def _json_problem(exc: json.JSONDecodeError) -> str:
    """What is wrong and where on the line: "Unterminated string starting at column 119" (some of json's messages end
    in "at" already)."""
    return f"{exc.msg.removesuffix(' at')} at column {exc.colno}"


def _encodable(data: Any) -> bool:
    """Whether a parsed record can be written back as UTF-8 (paired surrogate escapes decode to one character)."""
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _starts_with_array(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(4096).lstrip().startswith(b"[")


def _read_json_array(path: Path, policy: BadRecordPolicy) -> Iterator[SourceRecord]:
    try:
        items = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: invalid UTF-8 at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: invalid JSON ({_json_problem(exc)})") from None
    except (RecursionError, ValueError):
        raise DataError(f"{path}: invalid JSON (nested too deeply, or a number too long to read)") from None
    for index, data in enumerate(items):
        where = f"{path}:item {index}"
        if not isinstance(data, dict):
            policy.reject(where, "not_an_object", f"expected a JSON object, got {type(data).__name__}")
            continue
        yield SourceRecord(where, data)


def _read_parquet(path: Path) -> Iterator[SourceRecord]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a corrupt file
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    for index, data in enumerate(table.to_pylist(), start=1):
        yield SourceRecord(f"{path}:row {index}", data)


def _read_dataset_dir(path: Path) -> Iterator[SourceRecord]:
    import datasets

    try:
        dataset = datasets.load_from_disk(str(path))
    except FileNotFoundError:
        raise DataError(f"{path}: a directory given as data must be saved with datasets' save_to_disk") from None
    if isinstance(dataset, datasets.DatasetDict):
        if len(dataset) != 1:
            raise DataError(f"{path}: holds splits {sorted(dataset)}; point at one split's directory")
        dataset = next(iter(dataset.values()))
    for index, data in enumerate(dataset, start=1):
        yield SourceRecord(f"{path}:row {index}", dict(data))


def _read_hub_dataset(source: str) -> Iterator[SourceRecord]:
    import datasets

    dataset_id, _, split = source.partition(":")
    split = split or "train"
    try:
        dataset = datasets.load_dataset(dataset_id, split=split)
    except Exception as exc:  # offline, missing id, missing split: all reach the user the same way
        raise DataError(
            f"{source}: no local file by that name, and loading it as a datasets id (split {split!r}) failed: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None
    for index, data in enumerate(dataset, start=1):
        yield SourceRecord(f"{source}:row {index}", dict(data))


# Why a write can fail that the user can fix, by errno.
WRITE_FAILURES = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "the operation is not permitted",
}


def write_failure(path: str | Path | None, exc: OSError) -> WpoError | None:
    """One line for a write the machine refused, naming the path and what is kept; None for other errors."""
    reason = WRITE_FAILURES.get(exc.errno or 0)
    if reason is None:
        return None
    return WpoError(
        f"cannot write {path or exc.filename or 'a file'}: {reason}; everything finished before it is "
        "saved (outputs, progress and caches are fsynced as they finish): fix that and rerun, and the "
        "run resumes"
    )


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn a refused write inside the block into `write_failure`'s one line."""
    try:
        yield
    except OSError as exc:
        failure = write_failure(path, exc)
        if failure is None:
            raise
        raise failure from None


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_orphaned_temporaries(target: Path) -> None:
    """Remove temporary siblings of `target` (`.NAME.PID.*.tmp`) whose writer process is gone: what a kill left."""
    for stale in target.parent.glob(f".{target.name}.*.tmp"):
        pid = stale.name[len(target.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            stale.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


@contextmanager
def atomic_writer(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary sibling of `path`; on success fsync and rename it over `path`, on failure remove it.

    The temporary file is named by this process, and those of writers that were killed are removed first.
    """
    target = Path(path)
    with writing(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_orphaned_temporaries(target)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_name, 0o666 & ~umask)  # mkstemp creates 0600; outputs get the usual permissions
    try:
        with writing(target):
            with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_name, target)
            fsync_directory(target.parent)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> int:
    """Write records as UTF-8 JSON Lines atomically; returns how many were written."""
    count = 0
    with atomic_writer(path) as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
            count += 1
    return count


def write_json(path: str | Path, payload: Any) -> None:
    with atomic_writer(path) as handle:
        json.dump(payload, handle, ensure_ascii=False, indent=2, allow_nan=False)
        handle.write("\n")
