"""The ledger of a view folder: every entry rlhf-lens made in it, so it changes and deletes only those.

A view (`<TRL folder>/rlhf-lens/`) is a run directory that rlhf-lens writes inside a folder someone
else made. Its ledger, `.rlhf-lens-view.json` in the view, lists each entry the adapter created, by
path relative to the view, as "dir", "file" or "link:<target>". Before the adapter touches the view,
`check_view` walks it without following links and refuses (UnsafePathError, naming the entry) a view
that is itself a link, an entry missing from the ledger or of another kind than recorded, and any link
in what the analyses write (`analyses/`, `report.html`). Writing a view is then:

    ledger = check_view(folder, name)          # {} for a new view
    write_ledger(folder, name, ledger | planned)   # first: a crash leaves nothing unrecorded
    ... remove what is stale (only ledger entries), create what is planned (`rlhf_lens.runs.safe_fs`) ...
    write_ledger(folder, name, planned)
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path, PurePosixPath

from .errors import RunFormatError
from .layout import ANALYSES_DIR, REPORT_HTML
from .safe_fs import UnsafePathError, links_under, read_bytes, remove, write_bytes

LEDGER = ".rlhf-lens-view.json"
LEDGER_FORMAT = "rlhf-lens-view-ledger"
LEDGER_VERSION = 1
ANALYSIS_OUTPUTS = (ANALYSES_DIR, REPORT_HTML)
"""Top-level entries the analyses write into a view as into any run (checked for links, not ledgered)."""
_TEMP_NAME = re.compile(r"^\..+\.tmp-\d+-[0-9a-f]{8}$")
"""What `safe_fs.write_bytes` names a file before its rename: a leftover of a write that was killed."""

Ledger = dict[str, str]
"""{path relative to the view (POSIX): "dir" | "file" | "link:<target>"}"""


def link_kind(target: str | os.PathLike[str]) -> str:
    """The ledger kind of a link to `target`."""
    return f"link:{os.fspath(target)}"


def check_view(folder: Path, name: str) -> Ledger:
    """The ledger of view `folder/name` after checking that the view holds only what it lists (see the module
    docstring); {} when there is no view yet (or only an empty folder). UnsafePathError names what is wrong."""
    view = folder / name
    if not view.is_symlink() and not view.exists():
        return {}
    mode = os.lstat(view).st_mode
    if not stat.S_ISDIR(mode):
        what = "a symbolic link" if stat.S_ISLNK(mode) else "not a folder"
        raise UnsafePathError(
            f"{view} is {what}, not a view rlhf-lens made; rlhf-lens never writes through it. "
            f"Move it away and run again (rlhf-lens writes its run-directory view of {folder} there)"
        )
    found = _walk(view)
    ledger = _read_ledger(view, found)
    for rel, kind in sorted(found.items()):
        top = rel.split("/", 1)[0]
        if rel == LEDGER or top in ANALYSIS_OUTPUTS or (_TEMP_NAME.match(PurePosixPath(rel).name) and not kind == "dir"):
            continue
        recorded = ledger.get(rel)
        if recorded != kind:
            why = "it is not in the view's ledger" if recorded is None else f"the ledger records {recorded!r}"
            raise UnsafePathError(
                f"{view / rel} is {_spoken(kind)} but {why} ({view / LEDGER}): rlhf-lens did not make it and will not "
                f"change or delete it. Move it away (or delete the whole {view} folder, which rlhf-lens rebuilds) and run again"
            )
    links = [p for top in ANALYSIS_OUTPUTS for p in links_under(view, top)]
    if links:
        raise UnsafePathError(
            f"{links[0]} is a symbolic link where the analyses write their cache or report; rlhf-lens never writes "
            f"through a link. Delete it (or the whole {view} folder) and run again"
        )
    return ledger


def write_ledger(folder: Path, name: str, ledger: Ledger) -> None:
    """Write the view's ledger atomically (no link followed)."""
    body = {"format": LEDGER_FORMAT, "format_version": LEDGER_VERSION, "entries": dict(sorted(ledger.items()))}
    write_bytes(folder, PurePosixPath(name) / LEDGER, (json.dumps(body, indent=1) + "\n").encode("utf-8"))


def remove_stale(folder: Path, name: str, ledger: Ledger, keep: Ledger) -> None:
    """Delete the ledger's entries that `keep` lacks (or records otherwise), outermost first; nothing else."""
    stale = sorted((rel for rel, kind in ledger.items() if keep.get(rel) != kind), key=lambda rel: (rel.count("/"), rel))
    removed: list[str] = []
    for rel in stale:
        if not any(rel.startswith(parent + "/") for parent in removed):
            remove(folder, PurePosixPath(name) / rel)
            removed.append(rel)


def remove_temp_files(folder: Path, name: str) -> None:
    """Delete leftovers of killed atomic writes (`.<name>.tmp-<pid>-<hex>` files or links) in the view's own folders."""
    view = folder / name
    for rel, kind in _walk(view).items():
        top = rel.split("/", 1)[0]
        if kind != "dir" and top not in ANALYSIS_OUTPUTS and _TEMP_NAME.match(PurePosixPath(rel).name):
            remove(folder, PurePosixPath(name) / rel)


def _walk(view: Path) -> Ledger:
    """Every entry below `view` as {relative path: kind}, without following links."""
    found: Ledger = {}
    stack = [view] if view.is_dir() and not view.is_symlink() else []
    while stack:
        here = stack.pop()
        with os.scandir(here) as entries:
            for entry in entries:
                rel = Path(entry.path).relative_to(view).as_posix()
                if entry.is_symlink():
                    found[rel] = link_kind(os.readlink(entry.path))
                elif entry.is_dir(follow_symlinks=False):
                    found[rel] = "dir"
                    stack.append(Path(entry.path))
                else:
                    found[rel] = "file" if entry.is_file(follow_symlinks=False) else "special"
    return found


def _read_ledger(view: Path, found: Ledger) -> Ledger:
    if LEDGER not in found:
        if not found:
            return {}  # an empty folder: nothing to protect
        raise UnsafePathError(
            f"{view} exists but holds no {LEDGER}: rlhf-lens did not make it (or an older version did), so it will not "
            f"write into it. Move it away (or delete it if it is an old rlhf-lens view) and run again"
        )
    if found[LEDGER] != "file":
        raise UnsafePathError(f"{view / LEDGER} is {_spoken(found[LEDGER])}, not the ledger file rlhf-lens writes; delete {view}")
    raw = read_bytes(view, LEDGER)
    try:
        body = json.loads(raw.decode("utf-8"))
        entries = body["entries"] if body.get("format") == LEDGER_FORMAT else None
        valid = isinstance(entries, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in entries.items())
    except (ValueError, UnicodeDecodeError, AttributeError, KeyError, TypeError):
        valid = False
    if not valid:
        raise RunFormatError(f"{view / LEDGER} is damaged (not the ledger rlhf-lens writes); delete the {view} folder and run again")
    if body.get("format_version") != LEDGER_VERSION:
        raise RunFormatError(f"{view / LEDGER} has ledger version {body.get('format_version')!r}; delete the {view} folder and run again")
    return entries


def _spoken(kind: str) -> str:
    if kind.startswith("link:"):
        return f"a symbolic link to {kind[5:]}"
    return {"dir": "a folder", "file": "a file"}.get(kind, "a special file")


__all__ = ["LEDGER", "Ledger", "check_view", "link_kind", "remove_stale", "remove_temp_files", "write_ledger"]
