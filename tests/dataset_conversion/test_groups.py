"""dataset.json ``groups`` (patients / video sequences): validation and how the converters fill it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from samunet.dataset_conversion.common import ConversionError
from samunet.dataset_conversion.convert_2d_folder import convert_2d_folder
from samunet.dataset_conversion.convert_2d_folder import main as main_2d
from samunet.dataset_conversion.convert_nifti_pairs import convert_nifti_pairs
from samunet.dataset_conversion.dataset_json import (
    DatasetJsonError,
    case_groups,
    load_dataset_json,
    validate_dataset_json,
)

# <site>/train/{image,mask}/<patient>_<slice>.png: patients 00 (3 slices) and 01 (2 slices) at each site
SLICES = {"00": 3, "01": 2}


def _slice_folders(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for site in ("A", "B"):
        for patient, n in SLICES.items():
            for s in range(n):
                for sub, arr in (("image", rng.integers(0, 255, (12, 12), dtype=np.uint8)),
                                 ("mask", np.pad(np.full((4, 4), 255, np.uint8), 4))):
                    f = root / site / "train" / sub / f"{patient}_{s:02d}.png"
                    f.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(arr).save(f)
    return root


def _expected_groups() -> dict[str, str]:
    return {f"{site}_train_{p}_{s:02d}": f"{site}_train_{p}" for site in "AB" for p, n in SLICES.items()
            for s in range(n)}


def test_2d_folder_groups_from_pattern(samunet_roots, tmp_path):
    out = convert_2d_folder(_slice_folders(tmp_path / "src"), 520, "Slices", group_pattern=r"^(\d+)_")
    d = load_dataset_json(out)
    # patient 00 of site A and patient 00 of site B are different groups: the folders prefix the match
    assert d["groups"] == _expected_groups()
    assert len(set(d["groups"].values())) == 4


def test_2d_folder_pattern_without_capture_group_uses_the_match(samunet_roots, tmp_path):
    out = convert_2d_folder(_slice_folders(tmp_path / "src"), 520, "Slices", group_pattern=r"^\d+")
    assert load_dataset_json(out)["groups"] == _expected_groups()


def test_2d_folder_pattern_errors_name_file_and_pattern(samunet_roots, tmp_path):
    src = _slice_folders(tmp_path / "src")
    with pytest.raises(ConversionError, match=r"00_00\.png: --group_pattern '\^P\(\\d\+\)' does not match"):
        convert_2d_folder(src, 520, "Slices", group_pattern=r"^P(\d+)")
    with pytest.raises(ConversionError, match="not a valid regular expression"):
        convert_2d_folder(src, 520, "Slices", group_pattern="(")
    with pytest.raises(ConversionError, match="not both"):
        convert_2d_folder(src, 520, "Slices", group_pattern=r"^\d+", groups_csv=tmp_path / "g.csv")
    assert not any(samunet_roots["raw"].iterdir())


def test_2d_folder_groups_from_csv_by_case_id_or_path(samunet_roots, tmp_path):
    src = _slice_folders(tmp_path / "src")
    expected = _expected_groups()
    rows = []
    for case, group in expected.items():
        site, _, p, s = case.split("_")
        # site A by case id, site B by the source path relative to the input folder
        key = case if site == "A" else f"{site}/train/image/{p}_{s}.png"
        rows.append(f"{key},{group}")
    csv = tmp_path / "patients.csv"
    csv.write_text("case,group\n" + "\n".join(rows) + "\n")
    main_2d(["-i", str(src), "-d", "521", "-n", "SlicesCsv", "--groups", str(csv)])
    assert load_dataset_json(samunet_roots["raw"] / "Dataset521_SlicesCsv")["groups"] == expected


def test_2d_folder_groups_csv_errors_name_the_csv(samunet_roots, tmp_path):
    src = _slice_folders(tmp_path / "src")
    csv = tmp_path / "patients.csv"
    rows = [f"{c},{g}" for c, g in _expected_groups().items()]
    csv.write_text("\n".join(rows[1:]) + "\n")  # first case missing
    with pytest.raises(ConversionError, match=rf"{csv}: these cases have no group: A_train_00_00"):
        convert_2d_folder(src, 520, "Slices", groups_csv=csv)
    csv.write_text("\n".join(rows + ["Z_train_09_00,Z_09"]) + "\n")
    with pytest.raises(ConversionError, match=rf"{csv}: these cases are not in the dataset: Z_train_09_00"):
        convert_2d_folder(src, 520, "Slices", groups_csv=csv)
    csv.write_text("\n".join(rows + ["00_00.png,A_train_00"]) + "\n")  # file name found at both sites
    with pytest.raises(ConversionError, match=rf"{csv}: these names fit several cases: 00_00.png"):
        convert_2d_folder(src, 520, "Slices", groups_csv=csv)
    with pytest.raises(SystemExit, match="groups CSV not found"):
        main_2d(["-i", str(src), "-d", "520", "-n", "Slices", "--groups", str(tmp_path / "none.csv")])
    assert not any(samunet_roots["raw"].iterdir())


def test_nifti_pairs_groups(shared_data, samunet_roots, tmp_path):
    src = shared_data / "prostate_runmc6"
    out = convert_nifti_pairs(src / "images", src / "masks", 501, "Prostate", mask_suffix="_Segmentation",
                              group_pattern=r"^Case0[0-2]|^Case")
    assert load_dataset_json(out)["groups"] == {"Case00": "Case00", "Case01": "Case01", "Case02": "Case02",
                                                "Case03": "Case", "Case04": "Case", "Case05": "Case"}
    csv = tmp_path / "patients.csv"
    csv.write_text("".join(f"Case{i:02d}.nii.gz,P{i // 2}\n" for i in range(6)))  # by file name, no header
    out = convert_nifti_pairs(src / "images", src / "masks", 502, "Prostate2", mask_suffix="_Segmentation",
                              groups_csv=csv)
    assert load_dataset_json(out)["groups"] == {f"Case{i:02d}": f"P{i // 2}" for i in range(6)}


def _minimal(**extra) -> dict:
    return {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "a": 1}, "numTraining": 2,
            "file_ending": ".png", **extra}


@pytest.mark.parametrize("groups, expected", [
    (["a", "b"], "must be an object"),
    ({"c1": 7}, 'quote numbers, e.g. "7" not 7'),
    ({"c1": ""}, "non-empty strings"),
])
def test_groups_validation(groups, expected):
    with pytest.raises(DatasetJsonError, match=rf"^dataset.json: .*{expected}"):
        validate_dataset_json(_minimal(groups=groups))
    validate_dataset_json(_minimal(groups={"c1": "p1"}))


def test_case_groups_rejects_unknown_cases_naming_dataset_json(tmp_path):
    d = _minimal(groups={"c1": "p1", "c3": "p1"})
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(d))
    with pytest.raises(DatasetJsonError, match=rf"{path}: \"groups\" names 1 case\(s\) that are not in imagesTr: c3"):
        case_groups(load_dataset_json(tmp_path), ["c1", "c2"], path)
    assert case_groups(_minimal(), ["c1"]) is None
    assert case_groups(_minimal(groups={"c1": "p1"}), ["c1", "c2"]) == {"c1": "p1"}
