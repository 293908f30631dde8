"""Integrity checks of dataset.json's ``groups`` (patients / video sequences): a group must not
span domains, and a 2D dataset whose case names read ``<patient>_<slice>`` should have groups."""

from __future__ import annotations

import re

from samunet.experiment_planning.case_integrity import Problem

# "<patient>_<slice>" where the patient part ends in a digit: BIDMC_train_00_07 -> BIDMC_train_00
_SLICE_NAME = re.compile(r"^(?P<patient>.*\d)[_\-.](?P<slice>\d+)$")


def groups_across_domains(groups: dict[str, str], domains: dict[str, str]) -> list[Problem]:
    spread: dict[str, set[str]] = {}
    for case, g in groups.items():
        if case in domains:
            spread.setdefault(g, set()).add(domains[case])
    out = []
    for g, doms in sorted(spread.items()):
        if len(doms) > 1:
            out.append(Problem(
                "dataset.json",
                f"group {g!r} has cases in domains {sorted(doms)}: a domain fold trains on one domain and tests on "
                "the others, so it would test on cases of a group it trained on. If they are different patients, "
                "give them different group names",
            ))
    return out


def slices_without_groups(cases: list[str]) -> Problem | None:
    """A warning when most case names read ``<patient>_<slice>`` and some patient has several slices."""
    by_patient: dict[str, list[str]] = {}
    for c in cases:
        m = _SLICE_NAME.match(c)
        if m:
            by_patient.setdefault(m.group("patient"), []).append(c)
    matched = sum(len(v) for v in by_patient.values())
    if not cases or matched < 0.5 * len(cases) or len(by_patient) >= matched:
        return None
    patient, (a, b, *_) = max(by_patient.items(), key=lambda kv: (len(kv[1]), kv[0]))
    return Problem(
        "dataset.json",
        f"{matched} of {len(cases)} case names look like slices or frames of {len(by_patient)} patients/sequences "
        f"(<patient>_<slice>: {a} and {b} share {patient!r}), and dataset.json has no groups, so the splits may "
        "put slices of one patient in train and val (optimistic validation and checkpoint choice). If they are, "
        f'add "groups": {{"{a}": "{patient}", "{b}": "{patient}", ...}} to dataset.json, or reconvert with '
        "samunet_convert_2d_folder --group_pattern REGEX (e.g. '^(\\d+)_' for 00_07.png) or --groups CSV; then "
        "rerun samunet_plan_and_preprocess with --new_splits",
    )
