"""The teacher a distillation run was trained with, recorded so that --resume uses the same file.

A run stores {'path': absolute path, 'size': bytes, 'sha256': hex digest} of its teacher checkpoint in
opt.yaml (key `teacher_record`) and in every mid-run checkpoint (key `teacher`). On --resume:
  * no --teacher_weight given: the recorded path is used; a missing file or a different sha256 stops
    the run (UserError naming the path and both hashes) -- a retrained teacher is never used silently;
  * --teacher_weight X given: X is used (a deliberate change), with a warning naming both hashes when
    it differs from the recorded file, and the record is updated.
Runs saved before the record existed resume from opt.yaml's teacher_weight as before.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from utils.general import LOGGER, UserError


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def teacher_record(path: str | Path) -> dict:
    """{'path', 'size', 'sha256'} of an existing teacher file (path resolved to an absolute one)."""
    p = Path(path).resolve()
    return {"path": str(p), "size": p.stat().st_size, "sha256": sha256_of(p)}


def resume_teacher(record: dict | None, saved_path: str | None, override: str | None) -> tuple[Path, dict]:
    """The teacher file a resumed run uses and its (new) record; see the module docstring.

    record: the run's recorded teacher (None for runs saved before records); saved_path: opt.yaml's
    teacher_weight; override: --teacher_weight given on the --resume command line (None if not).
    """
    if override is not None:
        path = Path(override)
        if not path.is_file():
            raise UserError(f"--teacher_weight {override} (given with --resume) not found")
        new = teacher_record(path)
        if record and record.get("sha256") != new["sha256"]:
            LOGGER.warning(f"WARNING: --resume with --teacher_weight {new['path']} (sha256 {new['sha256']}) instead "
                           f"of the run's teacher {record.get('path')} (sha256 {record.get('sha256')}): the rest of "
                           "the run distils from the new file")
        return path, new
    if not record:  # a run from before teacher records: the old behaviour
        return Path(saved_path), teacher_record(saved_path) if saved_path and Path(saved_path).is_file() else {}
    path = Path(record["path"])
    if not path.is_file():
        raise UserError(f"--resume: the run's teacher {path} (sha256 {record['sha256']}) no longer exists; put it "
                        "back, or pass --teacher_weight <file> with --resume to continue with another teacher")
    digest = sha256_of(path)
    if digest != record["sha256"]:
        raise UserError(f"--resume: the run's teacher {path} changed since the run started: recorded sha256 "
                        f"{record['sha256']}, now {digest}. Restore the original file, or pass --teacher_weight "
                        f"{path} with --resume to continue distilling from the new one")
    return path, record
