"""Ingest: bring the configured source into ``data/raw`` as files the pipeline owns.

Every source writes the same layout, so the stages after ingest never care where data came from:

- ``<out>/files/<path>``: a copy of each image the source names;
- ``<out>/index.csv``: one row per entry the source holds, with columns ``path`` (relative to
  ``files/``), ``label``, ``origin`` (where it came from, relative to the source root:
  ``data.path`` for folder and csv, ``elpv-dataset:`` for the package's data folder),
  ``ingest_issue`` (empty, or why the entry was not copied) and any extra columns (ELPV:
  ``module_type``, ``defect_probability``);
- ``<out>/ingest.json``: the source, every declared class (empty class folders included), counts.

No output names a machine path (the checkout, the virtualenv, a home folder): a clone elsewhere
ingests to the same bytes, so ``data/raw`` hashes the same and a ``dvc pull``ed clone reruns
nothing. The absolute source files are kept in memory only, for the sync.

Entries that cannot be copied (a link out of the dataset root, a file the labels name but that
does not exist, a file with no label) stay in the index with the reason, so the audit reports
them; nothing is silently dropped. The copy is a sync: unchanged files are not copied again.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from recipe.errors import ConfigError, DataError
from recipe.paths import is_within

INDEX_COLUMNS = ["path", "label", "origin", "ingest_issue"]
ELPV_FOUR_CLASS = {0.0: "functional", 1 / 3: "possibly_defective", 2 / 3: "likely_defective", 1.0: "defective"}


@dataclass
class Listing:
    """What a source holds: index rows, declared classes, and each row's source file by
    ``path`` (absolute, in memory only: never written, the index's ``origin`` is relative)."""

    rows: list[dict] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)

    def add(self, row: dict, file: Path) -> None:
        self.rows.append(row)
        self.files[row["path"]] = file


def ingest(*, source: str, out: Path, seed: int, limit: int | None, **options) -> dict:
    """List the source, optionally take a stratified subset, sync the files into ``out``."""
    lister = {"elpv": list_elpv, "folder": list_folder, "csv": list_csv}[source]
    listing = lister(**options)
    rows = listing.rows
    usable = [r for r in rows if not r["ingest_issue"]]
    if limit is not None and limit < len(usable):
        keep = set(map(id, stratified_subset(usable, limit, seed)))
        rows = [r for r in rows if r["ingest_issue"] or id(r) in keep]
    index = pd.DataFrame(rows)
    index = index[INDEX_COLUMNS + [c for c in index.columns if c not in INDEX_COLUMNS]]
    copied = _sync(index, listing.files, Path(out) / "files")
    index.to_csv(Path(out) / "index.csv", index=False)
    summary = {
        "source": source,
        "classes": sorted(listing.classes),
        "entries": len(listing.rows),
        "entries_kept": len(index),
        "limit": limit,
        "ingest_issues": index["ingest_issue"].replace("", np.nan).dropna().value_counts().to_dict(),
    }
    (Path(out) / "ingest.json").write_text(json.dumps(summary, indent=2))
    if not copied:
        raise DataError(f"ingest: the source holds no image that could be copied ({len(index)} entries; see {Path(out) / 'index.csv'})")
    return summary


def list_elpv(*, task: str) -> Listing:
    import elpv_dataset

    labels_file = Path(elpv_dataset.__file__).parent / "data" / "labels.csv"
    table = pd.read_csv(labels_file, sep=r"\s+", header=None, names=["path", "prob", "type"])
    if task == "binary":
        labels = np.where(table["prob"] >= 0.5, "defective", "functional")
    else:
        levels = np.array(list(ELPV_FOUR_CLASS))
        nearest = np.abs(table["prob"].to_numpy()[:, None] - levels[None, :]).argmin(axis=1)
        labels = np.array(list(ELPV_FOUR_CLASS.values()))[nearest]
    listing = Listing(classes=sorted(set(labels)))
    for rel, label, mtype, prob in zip(table["path"], labels, table["type"], table["prob"]):
        row = {"path": rel, "label": label, "origin": f"elpv-dataset:{rel}", "ingest_issue": "",
               "module_type": mtype, "defect_probability": round(float(prob), 4)}
        listing.add(row, labels_file.parent / rel)
    return listing


def list_folder(*, path: str) -> Listing:
    root = _existing_dir(path, "data.path")
    listing = Listing(classes=sorted(d.name for d in root.iterdir() if d.is_dir() and not d.is_symlink()))
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        linked_dirs = [d for d in dirnames if (here / d).is_symlink()]
        for name in sorted(filenames) + sorted(linked_dirs):
            rel = (here / name).relative_to(root)
            label = rel.parts[0] if len(rel.parts) > 1 else ""
            listing.add(_entry(root, rel, label, base=root), root / rel)
        dirnames[:] = sorted(d for d in dirnames if d not in linked_dirs)
    return listing


def list_csv(*, path: str, labels_file: str, image_dir: str, fname_col: str, label_col: str, suffix: str) -> Listing:
    root = _existing_dir(path, "data.path")
    images = _existing_dir(root / image_dir, "data.image_dir")
    labels_path = root / labels_file
    if not labels_path.is_file():
        raise ConfigError(f"data.labels_file = {labels_file!r}: no such file in {root}")
    table = pd.read_csv(labels_path, dtype=str, keep_default_na=False)
    for key, col in (("data.fname_col", fname_col), ("data.label_col", label_col)):
        if col not in table.columns:
            raise ConfigError(f"{key} = {col!r}: no such column in {labels_file} (columns: {', '.join(table.columns)})")
    extras = [c for c in table.columns if c not in (fname_col, label_col)]
    listing = Listing(classes=sorted(set(table[label_col]) - {""}))
    named = set()
    for record in table.to_dict("records"):
        rel = Path(record[fname_col] + suffix)
        named.add(rel)
        row = _entry(images, rel, record[label_col], base=root)
        if not row["ingest_issue"] and not (images / rel).exists():
            row["ingest_issue"] = "missing_file"
        row.update({_extra_name(c): record[c] for c in extras})
        listing.add(row, images / rel)
    for dirpath, _, filenames in os.walk(images, followlinks=False):
        for name in sorted(filenames):
            rel = (Path(dirpath) / name).relative_to(images)
            if rel not in named:
                row = {**_entry(images, rel, "", base=root), **{_extra_name(c): "" for c in extras}}
                listing.add(row, images / rel)
    return listing


def stratified_subset(rows: list[dict], n: int, seed: int) -> list[dict]:
    """``n`` rows keeping each label's share (largest-remainder rounding, one row per label at least)."""
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[dict]] = {}
    for r in rows:
        by_label.setdefault(r["label"], []).append(r)
    labels = sorted(by_label)
    exact = np.array([n * len(by_label[k]) / len(rows) for k in labels])
    take = np.maximum(np.floor(exact).astype(int), 1)
    for i in np.argsort(-(exact - np.floor(exact)), kind="stable")[: max(n - take.sum(), 0)]:
        take[i] += 1
    chosen = []
    for label, k in zip(labels, take):
        group = by_label[label]
        chosen += [group[i] for i in sorted(rng.choice(len(group), size=min(k, len(group)), replace=False))]
    return chosen


def _entry(root: Path, rel: Path, label: str, *, base: Path) -> dict:
    """An index row for ``root/rel``, with the reason when it must not be copied; its ``origin``
    is relative to ``base`` (the source root)."""
    src = root / rel
    issue = ""
    if not label:
        issue = "no_label"
    if not is_within(src, root):
        # A link (or a ../ in a labels file) that leaves the dataset root is never followed.
        issue = "path_outside_root"
    elif src.is_symlink() and src.is_dir():
        issue = "linked_directory"  # its files are listed where they really live, or are outside
    origin = Path(os.path.relpath(src, base)).as_posix()  # lexical: a link stays where it was named
    return {"path": rel.as_posix(), "label": label, "origin": origin, "ingest_issue": issue}


def _extra_name(column: str) -> str:
    return f"csv_{column}" if column in INDEX_COLUMNS else column


def _existing_dir(path: str | Path, key: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ConfigError(f"{key} = {str(path)!r}: not a directory")
    return p.resolve()


def _sync(index: pd.DataFrame, sources: dict[str, Path], files: Path) -> int:
    """Make ``files`` hold exactly the copyable entries of ``index`` (their source files in
    ``sources``, by path); copy only what changed. Returns how many files ``files`` holds."""
    wanted = {}
    for rel, issue in zip(index["path"], index["ingest_issue"]):
        if not issue and sources[rel].is_file():
            wanted[rel] = sources[rel]
    files.mkdir(parents=True, exist_ok=True)
    for existing in [p for p in files.rglob("*") if p.is_file() or p.is_symlink()]:
        if existing.relative_to(files).as_posix() not in wanted:
            existing.unlink()
    for rel, src in wanted.items():
        dst = files / rel
        s = src.stat()
        if dst.is_file() and not dst.is_symlink():
            d = dst.stat()
            if (d.st_size, d.st_mtime_ns) == (s.st_size, s.st_mtime_ns):
                continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    return len(wanted)
