"""Ingest: bring the configured source into ``data/raw`` as files the pipeline owns.

Every source writes the same layout, so the stages after ingest never care where data came from:

- ``<out>/files/<path>``: a copy of each image the source names;
- ``<out>/index.csv``: one row per entry the source holds, with columns ``path`` (relative to
  ``files/``), ``label``, ``origin`` (where it came from, relative to the source root:
  ``data.path`` for folder and csv, ``elpv-dataset:`` for the package's data folder),
  ``ingest_issue`` (empty, or why the entry was not copied) and any extra columns (ELPV:
  ``module_type``, ``defect_probability``);
- ``<out>/ingest.json``: the source, every declared class (empty class folders included), counts;
  ``"task": "multi_label"`` when each image holds a label list (the csv source with
  ``data.task: multi_label``): its ``label`` is then the list, sorted and joined by a space
  (:func:`tag_list`; empty: none of the labels, kept), and the classes are the labels.

No output names a machine path (the checkout, the virtualenv, a home folder): a clone elsewhere
ingests to the same bytes, so ``data/raw`` hashes the same and a ``dvc pull``ed clone reruns
nothing. The absolute source files are kept in memory only, for the sync.

Entries that cannot be copied (a link out of the dataset root, a name that is absolute or holds a
``..`` component, a name that is not valid UTF-8, a file the labels name but that does not exist,
a file with no label) stay in the index with the reason, so the audit reports them; nothing is
silently dropped. The copy is a sync: unchanged files are not copied again.

A dataset from someone else cannot write outside ``<out>/files``: a name is refused before the
copy unless it is relative, free of ``..`` and lands, normalised and with every link resolved,
inside ``<out>/files``; a copy never writes through a link (``path_outside_root`` otherwise).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from recipe.core.layout import RAW
from recipe.core.errors import ConfigError, DataError
from recipe.core.paths import is_within

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
    copied = _sync(index, listing.files, Path(out) / RAW.files)
    index.to_csv(Path(out) / RAW.index, index=False)
    summary = {
        "source": source,
        **({"task": "multi_label"} if options.get("task") == "multi_label" else {}),
        "classes": sorted(listing.classes),
        "entries": len(listing.rows),
        "entries_kept": len(index),
        "limit": limit,
        "ingest_issues": index["ingest_issue"].replace("", np.nan).dropna().value_counts().to_dict(),
    }
    formula_like = _formula_like(index)
    if formula_like:  # only then: a dataset without such names keeps its ingest.json bytes
        summary["formula_like_names"] = formula_like
        print(f"ingest: note: {formula_like} label(s) or file name(s) start with = + - @ (a spreadsheet reads them "
              f"as formulas); they are kept as given, so open the CSVs under outputs/ with a text import, not a double click")
    (Path(out) / RAW.summary).write_text(json.dumps(summary, indent=2))
    if not copied:
        raise DataError(f"ingest: the source holds no image that could be copied ({len(index)} entries; see {Path(out) / 'index.csv'})")
    return summary


def _formula_like(index: pd.DataFrame) -> int:
    """Rows whose label or path a spreadsheet would take for a formula (OWASP's CSV injection
    prefixes). They stay as given: the CSVs are the pipeline's own records, read back by its
    stages, and a quote in front would change the class names (docs/data.md, from others)."""
    cells = pd.concat([index["label"], index["path"]], axis=1).astype(str)
    return int(cells.apply(lambda c: c.str.match(r"[=+\-@\t\r]")).any(axis=1).sum())


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


def list_folder(*, path: str, task: str) -> Listing:
    if task == "multi_label":
        raise ConfigError("data.task = 'multi_label': a folder source gives each image one label (its folder); "
                          "several labels per image need data=csv with a label list column (data.label_col)")
    root = _existing_dir(path, "data.path")
    listing = Listing(classes=sorted(d.name for d in root.iterdir()
                                     if d.is_dir() and not d.is_symlink() and not _undecodable(d.name)))
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        linked_dirs = [d for d in dirnames if (here / d).is_symlink()]
        for name in sorted(filenames) + sorted(linked_dirs):
            rel = (here / name).relative_to(root)
            label = rel.parts[0] if len(rel.parts) > 1 else ""
            listing.add(_entry(root, rel, label, base=root), root / rel)
        dirnames[:] = sorted(d for d in dirnames if d not in linked_dirs)
    return listing


def list_csv(*, path: str, labels_file: str, image_dir: str, fname_col: str, label_col: str, suffix: str,
             task: str, label_delim: str) -> Listing:
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
    multi = task == "multi_label"
    if multi:
        table[label_col] = [tag_list(v, label_delim) for v in table[label_col]]
        tags = sorted({t for v in table[label_col] for t in tags_of(v)})
        if not tags:
            raise DataError(f"data.label_col = {label_col!r}: no row of {labels_file} holds a label once split on "
                            f"data.label_delim = {label_delim!r}")
    listing = Listing(classes=tags if multi else sorted(set(table[label_col]) - {""}))
    named = set()
    for record in table.to_dict("records"):
        rel = Path(record[fname_col] + suffix)
        named.add(rel)
        row = _entry(images, rel, record[label_col], base=root, empty_ok=multi)
        if not row["ingest_issue"] and not (images / rel).exists():
            row["ingest_issue"] = "missing_file"
        row.update({_extra_name(c): record[c] for c in extras})
        listing.add(row, images / rel)
    for dirpath, _, filenames in os.walk(images, followlinks=False):
        for name in sorted(filenames):
            rel = (Path(dirpath) / name).relative_to(images)
            if rel not in named:  # in no row of the labels file: no label, even for multi_label
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
    if n < len(labels):
        raise ConfigError(f"data.limit = {n}: below the number of classes ({len(labels)}); a subset that keeps "
                          f"every class needs at least {len(labels)} images")
    exact = np.array([n * len(by_label[k]) / len(rows) for k in labels])
    take = np.maximum(np.floor(exact).astype(int), 1)
    for i in np.argsort(-(exact - np.floor(exact)), kind="stable")[: max(n - take.sum(), 0)]:
        take[i] += 1
    while take.sum() > n:  # the one-per-label floor overshot: the largest share gives one back
        take[np.argmax(take)] -= 1
    chosen = []
    for label, k in zip(labels, take):
        group = by_label[label]
        chosen += [group[i] for i in sorted(rng.choice(len(group), size=min(k, len(group)), replace=False))]
    return chosen


TAG_SEP = " "  # how the index, the manifest and the split write an image's labels (data.task: multi_label)


def tag_list(value: str, delim: str) -> str:
    """A label list as the pipeline writes it: the labels of ``value`` split on ``delim`` (fastai's
    ``label_delim``), duplicates and empty ones out, sorted, joined by one space ("" for none). A
    label that itself holds white space is a one-line error: the joined form could not be split back."""
    tags = sorted({t.strip() for t in value.split(delim)} - {""}) if delim.strip() else sorted(set(value.split()))
    spaced = [t for t in tags if any(c.isspace() for c in t)]
    if spaced:
        raise DataError(f"data.label_delim = {delim!r}: the label {spaced[0]!r} holds white space; "
                        "rename it (for example with an underscore) or split on the white space")
    return TAG_SEP.join(tags)


def tags_of(value: str) -> list[str]:
    """The labels of one image's label list, as :func:`tag_list` wrote it ("" holds none)."""
    return value.split(TAG_SEP) if value else []


def _entry(root: Path, rel: Path, label: str, *, base: Path, empty_ok: bool = False) -> dict:
    """An index row for ``root/rel``, with the reason when it must not be copied; its ``origin``
    is relative to ``base`` (the source root). ``empty_ok``: an empty label is a label list that
    names none of the labels (multi_label), not a missing label."""
    src = root / rel
    issue = ""
    if not label and not empty_ok:
        issue = "no_label"
    if rel.is_absolute() or ".." in rel.parts or rel.as_posix() in ("", "."):
        # The name itself leaves (or could leave) the root: never resolved, never copied. A
        # ``link/../../x`` can resolve inside the dataset yet name a place outside data/raw/files.
        issue = "path_outside_root"
    elif not is_within(src, root):
        issue = "path_outside_root"  # a link that leaves the dataset root is never followed
    elif src.is_symlink() and src.is_dir():
        issue = "linked_directory"  # its files are listed where they really live, or are outside
    if _undecodable(str(rel)) or _undecodable(label):
        issue = "bad_name"  # not valid UTF-8: no CSV, JSON or MLflow record could name it faithfully
    origin = _printable(Path(os.path.relpath(src, base)).as_posix())  # lexical: a link stays where it was named
    return {"path": _printable(rel.as_posix()), "label": _printable(label), "origin": origin, "ingest_issue": issue}


def _undecodable(name: str) -> bool:
    """True for a name the file system gave as bytes that are not UTF-8 (Python holds them as
    lone surrogates, which no UTF-8 file can store)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _printable(name: str) -> str:
    """``name`` with each undecodable byte written as ``\\xNN``: what the index records for a
    ``bad_name`` row, so the user can find the file."""
    return os.fsencode(name).decode("utf-8", "backslashreplace") if _undecodable(name) else name


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
    files.mkdir(parents=True, exist_ok=True)
    for k, (rel, issue) in enumerate(zip(index["path"], index["ingest_issue"])):
        if issue or not sources[rel].is_file():
            continue
        if not _inside(files, rel):
            index.iat[k, index.columns.get_loc("ingest_issue")] = "path_outside_root"
            continue
        wanted[rel] = sources[rel]
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
        if dst.is_symlink():
            dst.unlink()  # copy2 would write through it
        shutil.copy2(src, dst)
    return len(wanted)


def _inside(files: Path, rel: str) -> bool:
    """True when ``files/rel``, normalised, lies inside ``files`` and no folder on the way is a
    link: the last check before anything is written."""
    files = Path(os.path.abspath(files))
    dst = Path(os.path.normpath(files / rel))
    if dst == files or not is_within(dst.parent, files) or files not in dst.parents:
        return False
    return not any(p.is_symlink() for p in dst.parents if files in p.parents)  # dst itself is replaced
