"""dataset.json: writing, loading with validation, and listing a raw dataset's cases.

The format is nnU-Net v2's (``channel_names``, ``labels``, ``numTraining``,
``file_ending``, optional ``overwrite_image_reader_writer``) plus two optional keys,
``domains``: ``{case: site}`` and ``groups``: ``{case: patient or video sequence}`` (splits keep
the cases of one group on one side; a case not listed is a group of its own).

As in nnU-Net v2, a label named ``ignore`` (the highest value) marks unannotated pixels: it is
no class the network predicts (:func:`label_values`, :func:`foreground_labels` leave it out),
training losses skip its pixels and evaluation masks them out (:func:`ignore_label`).
Region-based labels (a list of values per label, nnU-Net's region training) are refused with
the alternative (plain integer labels trained as separate classes).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from samunet.utilities.file_io import save_json

#: nnU-Net v2's name for the label of unannotated pixels (excluded from loss and metrics)
IGNORE_LABEL_NAME = "ignore"

SAFE_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-.]*$")
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


class DatasetJsonError(ValueError):
    """dataset.json is missing, not JSON, or has missing/wrong keys."""


def is_safe_case_id(case: str) -> bool:
    return bool(SAFE_CASE_ID.match(case)) and ".." not in case


def generate_dataset_json(
    output_folder: str | Path,
    channel_names: dict,
    labels: dict,
    num_training_cases: int,
    file_ending: str,
    dataset_name: str | None = None,
    domains: dict | None = None,
    groups: dict | None = None,
    description: str | None = None,
    reference: str | None = None,
    licence: str | None = None,
    **extra,
) -> dict:
    """Write ``dataset.json`` into ``output_folder`` (atomically) and return it."""
    d = {
        "channel_names": {str(k): v for k, v in channel_names.items()},
        "labels": {k: int(v) for k, v in labels.items()},
        "numTraining": int(num_training_cases),
        "file_ending": file_ending,
    }
    if dataset_name:
        d["name"] = dataset_name
    if description:
        d["description"] = description
    if reference:
        d["reference"] = reference
    if licence:
        d["licence"] = licence
    if domains:
        d["domains"] = dict(sorted(domains.items()))
    if groups:
        d["groups"] = dict(sorted(groups.items()))
    d.update(extra)
    save_json(d, Path(output_folder) / "dataset.json")
    return d


def load_dataset_json(raw_folder: str | Path) -> dict:
    """Load and validate ``raw_folder/dataset.json``; errors name the file and the fix."""
    path = Path(raw_folder) / "dataset.json"
    if not path.is_file():
        raise DatasetJsonError(f"{path}: not found. Every raw dataset needs a dataset.json (see documentation/dataset_format.md).")
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f, object_pairs_hook=_object_without_duplicate_keys)
    except json.JSONDecodeError as e:
        raise DatasetJsonError(f"{path}: is not valid JSON ({e}). Fix the syntax.") from None
    except UnicodeDecodeError:
        raise DatasetJsonError(f"{path}: is not UTF-8 text. Save it as UTF-8.") from None
    except _DuplicateKey as e:
        raise DatasetJsonError(
            f"{path}: key {e.args[0]!r} appears twice in one object (JSON readers silently keep only the last "
            "one). Remove or merge the duplicate."
        ) from None
    validate_dataset_json(d, path)
    return d


_KEY_TYPES = {dict: "an object", int: "an integer", str: "a string"}
_KEY_EXAMPLES = {
    "channel_names": '"channel_names": {"0": "MRI"}',
    "labels": '"labels": {"background": 0, "tumour": 1}',
    "numTraining": '"numTraining": 20 (the number of cases in imagesTr)',
    "file_ending": '"file_ending": ".nii.gz"',
}


class _DuplicateKey(Exception):
    pass


def _object_without_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    d = {}
    for key, value in pairs:
        if key in d:
            raise _DuplicateKey(key)
        d[key] = value
    return d


def validate_dataset_json(d: object, path: str | Path = "dataset.json") -> None:
    problems: list[str] = []
    if not isinstance(d, dict):
        raise DatasetJsonError(f"{path}: must hold a JSON object, found {type(d).__name__}.")
    for key, typ in (("channel_names", dict), ("labels", dict), ("numTraining", int), ("file_ending", str)):
        if key not in d:
            # nnU-Net v1 used "modality" for channel names
            if key == "channel_names" and "modality" in d:
                problems.append('key "channel_names" missing (found nnU-Net v1 "modality": rename it to "channel_names")')
            else:
                problems.append(f'key "{key}" missing: add it, e.g. {_KEY_EXAMPLES[key]}')
        elif not isinstance(d[key], typ) or (typ is int and isinstance(d[key], bool)):
            problems.append(f'"{key}" must be {_KEY_TYPES[typ]}, found {type(d[key]).__name__} {d[key]!r}: '
                            f'write it as {_KEY_EXAMPLES[key]}')
    if isinstance(d.get("channel_names"), dict):
        cn = d["channel_names"]
        if not cn:
            problems.append('"channel_names" is empty; give at least {"0": "MRI"}')
        elif sorted(cn) != [str(i) for i in range(len(cn))]:
            problems.append(f'"channel_names" keys must be "0", "1", ... consecutively, found {sorted(cn)}')
        elif not all(isinstance(v, str) for v in cn.values()):
            problems.append('"channel_names" values must be strings such as "CT", "MRI", "R"')
    if isinstance(d.get("labels"), dict):
        lab = d["labels"]
        bad = {k: v for k, v in lab.items() if not isinstance(v, int) or isinstance(v, bool)}
        regions = {k: v for k, v in bad.items() if isinstance(v, (list, tuple))}
        if regions or "regions_class_order" in d:
            problems.append(_region_labels_message(regions, "regions_class_order" in d))
        elif bad:
            problems.append(f'"labels" values must be integers; non-integer labels are not supported: {bad}')
        else:
            values = sorted(lab.values())
            if 0 not in values:
                problems.append('"labels" must contain background with value 0, e.g. "background": 0')
            if len(set(values)) != len(values):
                problems.append(f'"labels" values must be unique, found {values}')
            elif values != list(range(len(values))):
                problems.append(f'"labels" values must be consecutive from 0, found {values}: renumber the label maps')
            ignore = lab.get(IGNORE_LABEL_NAME)
            if ignore is not None and ignore != max(values):
                problems.append(f'the "{IGNORE_LABEL_NAME}" label must have the highest value (nnU-Net v2\'s rule), '
                                f'found {ignore} below {max(values)}: renumber it to {max(values)} in labels and '
                                'in the label maps')
            if len(values) - (ignore is not None) < 2:
                problems.append('"labels" needs at least one foreground label besides background'
                                + (f' and "{IGNORE_LABEL_NAME}"' if ignore is not None else ''))
    if isinstance(d.get("numTraining"), int) and not isinstance(d.get("numTraining"), bool) and d["numTraining"] < 1:
        problems.append(f'"numTraining" must be at least 1, found {d["numTraining"]}')
    if isinstance(d.get("file_ending"), str) and not d["file_ending"].startswith("."):
        problems.append(f'"file_ending" must start with a dot, e.g. ".nii.gz", found {d["file_ending"]!r}')
    if "domains" in d:
        dom = d["domains"]
        if not isinstance(dom, dict) or not all(isinstance(k, str) and isinstance(v, str) and v for k, v in dom.items()):
            problems.append('"domains" must map case ids to non-empty site names: {"case_01": "siteA", ...}')
    if "groups" in d:
        grp = d["groups"]
        if not isinstance(grp, dict):
            problems.append(f'"groups" must be an object mapping case ids to patient/sequence names, found '
                            f'{type(grp).__name__}: write it as {{"slice_00_00": "patient_00", ...}}')
        else:
            bad = {k: v for k, v in grp.items() if not isinstance(v, str) or not v.strip()}
            if bad:
                shown = dict(list(bad.items())[:5])
                problems.append(f'"groups" values must be non-empty strings (the patient or sequence name), found '
                                f'{shown}{" and more" if len(bad) > 5 else ""}: quote numbers, e.g. "7" not 7')
    if problems:
        raise DatasetJsonError(f"{path}: " + "; ".join(problems) + ".")


def _region_labels_message(regions: dict, has_class_order: bool) -> str:
    found = ", ".join(f'"{k}": {v}' for k, v in regions.items())
    what = f"labels {found}" if regions else '"regions_class_order"'
    if regions and has_class_order:
        what += ' and "regions_class_order"'
    return (f"region-based labels ({what}) are nnU-Net's region-based training, which samunet does not "
            "support. Use plain integer labels instead: give every region its own value in the label maps "
            '(e.g. "background": 0, "edema": 1, "non-enhancing": 2, "enhancing": 3) and train them as separate '
            'classes; remove "regions_class_order". Unions such as "whole tumor" = 1+2+3 can be formed from '
            "the predictions afterwards")


def ignore_label(dataset_json: dict) -> int | None:
    """The value of the ``ignore`` label (unannotated pixels), or None when there is none."""
    v = dataset_json["labels"].get(IGNORE_LABEL_NAME)
    return None if v is None else int(v)


def all_label_values(dataset_json: dict) -> list[int]:
    """Every declared label value (the ignore label included): what a label map may contain."""
    return sorted(dataset_json["labels"].values())


def label_values(dataset_json: dict) -> list[int]:
    """Sorted values of the classes the network predicts, background first (the ignore label left out)."""
    ignore = ignore_label(dataset_json)
    return [v for v in all_label_values(dataset_json) if v != ignore]


def foreground_labels(dataset_json: dict) -> dict[str, int]:
    """``{name: value}`` of the foreground classes (neither background nor the ignore label)."""
    ignore = ignore_label(dataset_json)
    return {k: v for k, v in sorted(dataset_json["labels"].items(), key=lambda kv: kv[1]) if v not in (0, ignore)}


def list_cases(image_folder: str | Path, file_ending: str) -> dict[str, dict[int, Path]]:
    """Map case id -> {channel index: file} for ``CASE_XXXX<file_ending>`` files in a folder.

    Files that do not follow the pattern are ignored here; the integrity check reports them.
    """
    folder = Path(image_folder)
    cases: dict[str, dict[int, Path]] = {}
    if not folder.is_dir():
        return cases
    for p in sorted(folder.iterdir()):
        if not p.is_file() or not p.name.endswith(file_ending):
            continue
        m = _CHANNEL_FILE.match(p.name[: -len(file_ending)])
        if m:
            cases.setdefault(m.group("case"), {})[int(m.group("channel"))] = p
    return cases


def channel_files(case_files: dict[int, Path]) -> list[Path]:
    return [case_files[k] for k in sorted(case_files)]


def training_cases(raw_folder: str | Path, dataset_json: dict) -> dict[str, dict]:
    """``{case: {"images": [paths], "label": path}}`` for every case in imagesTr."""
    raw_folder = Path(raw_folder)
    fe = dataset_json["file_ending"]
    out = {}
    for case, chans in list_cases(raw_folder / "imagesTr", fe).items():
        out[case] = {"images": channel_files(chans), "label": raw_folder / "labelsTr" / f"{case}{fe}"}
    return out


def case_groups(dataset_json: dict, cases, path: str | Path = "dataset.json") -> dict[str, str] | None:
    """``groups`` of ``dataset_json`` (``{case: group}``), checked against ``cases``; ``None`` without the key.

    Raises :class:`DatasetJsonError` naming ``path`` when ``groups`` lists a case that is not
    among ``cases`` (a typo would otherwise silently leave that case ungrouped)."""
    groups = dataset_json.get("groups")
    if not groups:
        return None
    unknown = sorted(set(groups) - set(cases))
    if unknown:
        shown = ", ".join(unknown[:10]) + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
        raise DatasetJsonError(
            f"{path}: \"groups\" names {len(unknown)} case(s) that are not in imagesTr: {shown}. "
            "Fix the case names (the image file name without _0000 and the ending) or remove those entries."
        )
    return dict(groups)


def case_domain(dataset_json: dict, case: str) -> str | None:
    return (dataset_json.get("domains") or {}).get(case)
