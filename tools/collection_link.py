"""Where Ansible and Python find this repository as the collection ``flashcat.flashduty``.

``.build/collections/ansible_collections/flashcat/flashduty`` is a relative symlink to the repo
root (the Makefile's ``collections-link`` target makes the same one). Used by tests/conftest.py
and the scripts in bench/.
"""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
COLLECTIONS_DIR = REPO_ROOT / ".build" / "collections"
COLLECTION_LINK = COLLECTIONS_DIR / "ansible_collections" / "flashcat" / "flashduty"


def ensure_collection_link():
    """Make COLLECTION_LINK a relative symlink to the repo root, atomically (concurrent runs may race)."""
    target = os.path.join("..", "..", "..", "..")
    if COLLECTION_LINK.is_symlink() and os.readlink(COLLECTION_LINK) == target:
        return
    COLLECTION_LINK.parent.mkdir(parents=True, exist_ok=True)
    tmp = COLLECTION_LINK.with_name(f".flashduty.{os.getpid()}")
    if tmp.is_symlink():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, COLLECTION_LINK)
