"""The on-disk format of a checkpoint directory, without torch: step directory names, the manifest that
makes a save complete (every file's size and sha256, written last), verification, the newest valid
checkpoint, and the `latest` pointer. The launcher and `mnemos ckpt` use it before any rank starts;
parallel/checkpoint.py writes checkpoints through it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from pathlib import Path

log = logging.getLogger("mnemos.checkpoint")

MANIFEST = "manifest.json"
STEP_DIR = re.compile(r"^step_(\d{8})$")


def step_dirname(step: int) -> str:
    return f"step_{step:08d}"


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_digest(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


DIGEST_PREFIX = ".digests_rank_"  # per-rank digests of an asynchronous finalize (not checkpoint content)


def checkpoint_files(ckpt_dir: Path) -> list[Path]:
    return [p for p in sorted(ckpt_dir.rglob("*"))
            if p.is_file() and p.name != MANIFEST and not p.name.startswith(DIGEST_PREFIX)]


def digest_files(ckpt_dir: Path, rank: int = 0, world_size: int = 1) -> dict:
    """fsync + size + sha256 of this rank's share (every world_size-th file) of the checkpoint's files."""
    files = {}
    for i, p in enumerate(checkpoint_files(ckpt_dir)):
        if i % world_size == rank:
            fsync_path(p)
            files[str(p.relative_to(ckpt_dir))] = {"bytes": p.stat().st_size, "sha256": file_digest(p)}
    return files


def write_manifest(ckpt_dir: Path, meta: dict, files: dict | None = None) -> dict:
    """Write manifest.json last. `files`: digests already computed (by all ranks in parallel)."""
    if files is None:
        files = digest_files(ckpt_dir)
    files = dict(sorted(files.items()))
    manifest = {**meta, "files": files, "created_unix": time.time()}
    tmp = ckpt_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    fsync_path(tmp)
    os.replace(tmp, ckpt_dir / MANIFEST)
    return manifest


def verify(ckpt_dir: str | Path) -> tuple[bool, str]:
    """(ok, reason). Checks the manifest exists and every file's size and sha256."""
    ckpt_dir = Path(ckpt_dir)
    mpath = ckpt_dir / MANIFEST
    if not mpath.exists():
        return False, f"{ckpt_dir.name}: no {MANIFEST} (the save did not finish)"
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        return False, f"{ckpt_dir.name}: {MANIFEST} is not valid JSON ({e})"
    for rel, info in manifest.get("files", {}).items():
        p = ckpt_dir / rel
        if not p.exists():
            return False, f"{ckpt_dir.name}: file {rel} listed in the manifest is missing"
        size = p.stat().st_size
        if size != info["bytes"]:
            return False, f"{ckpt_dir.name}: file {rel} has {size} bytes, manifest says {info['bytes']} (truncated?)"
        if file_digest(p) != info["sha256"]:
            return False, f"{ckpt_dir.name}: file {rel} fails its sha256 checksum (corrupted)"
    return True, "ok"


def looks_complete(ckpt_dir: str | Path) -> bool:
    """The cheap half of verify(): a readable manifest and every file it lists present with its size. Pruning
    uses it at every save, where hashing the checkpoints it keeps would cost as much as writing them."""
    ckpt_dir = Path(ckpt_dir)
    try:
        files = json.loads((ckpt_dir / MANIFEST).read_text()).get("files", {})
        return all((ckpt_dir / rel).stat().st_size == info["bytes"] for rel, info in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def read_manifest(ckpt_dir: str | Path) -> dict:
    return json.loads((Path(ckpt_dir) / MANIFEST).read_text())


def list_checkpoints(root: str | Path) -> list[Path]:
    """Checkpoint directories under root, newest step first."""
    root = Path(root)
    if not root.exists():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)), reverse=True)


def newest_valid(root: str | Path, skipped: set[str] | None = None) -> Path | None:
    """The newest checkpoint that verifies; the names of the newer ones that failed go into `skipped`."""
    for ckpt in list_checkpoints(root):
        ok, reason = verify(ckpt)
        if ok:
            return ckpt
        log.warning("skipping checkpoint %s: %s", ckpt, reason)
        if skipped is not None:
            skipped.add(ckpt.name)
    return None


def write_latest(root: Path, name: str) -> None:
    tmp = root / ".latest.tmp"
    tmp.write_text(name + "\n")
    fsync_path(tmp)
    os.replace(tmp, root / "latest")
