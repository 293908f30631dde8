"""``samunet_report --html``: a self-contained report.html, checked as text and in headless Chromium.

The results tree is built without training: the synthetic raw dataset of ``conftest`` (6
cases, domains A and B, labels 1 and 2), predictions written as shifted / eroded copies of the
references, real ``summary.json`` files from ``evaluate_folder`` and a ``prompts.json`` with
boxes for the SAM rows.

The browser test needs Chromium (Debian package ``chromium``; ``.ci/run`` installs it). It
skips when none is found, unless ``SAMUNET_REQUIRE_BROWSER=1`` (set by ``.ci/run``): then a
missing browser fails.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

import trained_tree
from conftest import make_synthetic_raw
from samunet.evaluation.report import build_report, main

DATASET = "Dataset650_Synthetic"
DOMAINS = {f"s{i:02d}": ("A" if i % 2 == 0 else "B") for i in range(6)}
THUMBS = 2


# --------------------------------------------------------------------------- the results tree


def _read(path):
    import SimpleITK as sitk

    im = sitk.ReadImage(str(path))
    return im, sitk.GetArrayFromImage(im)


def _write_prediction(raw, folder, case, shift: int, erode: int = 0):
    """A prediction: the reference shifted by ``shift`` pixels along x (and eroded ``erode`` times)."""
    import SimpleITK as sitk
    from scipy import ndimage

    ref_im, ref = _read(raw / "labelsTr" / f"{case}.nii.gz")
    pred = np.roll(ref, shift, axis=2)
    for _ in range(erode):
        pred = np.where(ndimage.binary_erosion(pred > 0), pred, 0).astype(ref.dtype)
    im = sitk.GetImageFromArray(pred.astype(np.uint8))
    im.CopyInformation(ref_im)
    folder.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(im, str(folder / f"{case}.nii.gz"))


def _boxes(raw, case):
    """prompts.json entries: the bounding box of each label on each slice of the reference."""
    _, ref = _read(raw / "labelsTr" / f"{case}.nii.gz")
    out = []
    for z in range(ref.shape[0]):
        for lab in (1, 2):
            ys, xs = np.nonzero(ref[z] == lab)
            if len(ys):
                out.append({"z": z, "label": lab, "box": [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]})
    return out


def build_tree(roots) -> dict:
    from samunet.evaluation.evaluate import evaluate_folder

    raw = make_synthetic_raw(roots["raw"], num_labels=2)
    dj = json.loads((raw / "dataset.json").read_text())
    res = roots["results"] / DATASET
    a_cases = [c for c, d in DOMAINS.items() if d == "A"]
    b_cases = [c for c, d in DOMAINS.items() if d == "B"]
    folders = {}

    def fold(trainer, fold_name, split, cases, shifts, erode=0, skip=(), prompts=False):
        f = res / f"{trainer}__samunetPlans" / f"fold_{fold_name}" / split
        for c, s in zip(cases, shifts):
            if c not in skip:
                _write_prediction(raw, f, c, s, erode)
        if prompts:  # as a SAM trainer records them: for the cases it predicted
            (f / "prompts.json").write_text(json.dumps({c: _boxes(raw, c) for c in cases if c not in skip}))
        evaluate_folder(raw / "labelsTr", f, dj, cases=cases)
        folders[(trainer, fold_name, split)] = f

    fold("ResNetTrainer", "domain_A", "test", b_cases, (1, 3, 5))
    fold("ResNetTrainer", "domain_A", "validation", a_cases[:1], (0,))
    fold("ResNetTrainer", "domain_B", "test", a_cases, (2, 4, 6), erode=1)
    fold("ResNetTrainer", "domain_B", "validation", b_cases[:1], (0,))
    fold("SAMBoxTrainer", "domain_A", "test", b_cases, (0, 2, 4), skip=("s05",), prompts=True)
    fold("SAMBoxTrainer", "domain_A", "test_gt_box", b_cases, (0, 1, 0), prompts=True)
    fold("SAMBoxTrainer", "domain_A", "validation", a_cases[:1], (0,))
    fold("ResNetTrainer", "0", "validation", ["s00", "s01"], (1, 2))
    fold("ResNetTrainer", "1", "validation", ["s02", "s03"], (3, 1))
    return {"raw": raw, "results": res, "folders": folders}


@pytest.fixture(scope="module")
def html_tree(tmp_path_factory):
    base = tmp_path_factory.mktemp("report_html")
    with pytest.MonkeyPatch.context() as mp:
        roots = trained_tree.make_roots(base, mp)
        tree = build_tree(roots)
        assert main(["-d", "650", "--html", "--thumbnails", str(THUMBS)]) == 0
    tree["roots"] = roots
    tree["report"] = tree["results"] / "report"
    tree["html"] = tree["report"] / "report.html"
    return tree


def _summary(tree, trainer, fold, split):
    return json.loads((tree["folders"][(trainer, fold, split)] / "summary.json").read_text())


def _f4(v) -> str:
    return f"{v:.4f}"


# --------------------------------------------------------------------------- parsing the page


class _Page(HTMLParser):
    """The tables (``{id: {row: {col: text}}}``), images, URLs and thumbnails of a report.html."""

    def __init__(self):
        super().__init__()
        self.tables, self.imgs, self.urls, self.thumbs, self.script_src, self.body = {}, [], [], [], [], {}
        self._table = self._row = self._col = self._text = self._section = self._thumb = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.urls += [a[k] for k in ("src", "href") if k in a]
        cls = a.get("class") or ""
        if tag == "body":
            self.body = a
        elif tag == "section" and "data-domain" in a:
            self._section = a["data-domain"]
        elif tag == "table" and "results" in cls:
            self._table = self.tables.setdefault(a["id"], {})
        elif tag == "tr" and self._table is not None and "data-row" in a:
            self._row = self._table.setdefault(a["data-row"], {})
        elif tag == "td" and self._row is not None:
            self._col, self._text = a["data-col"], []
        elif tag == "figure" and "thumb" in cls:
            self._thumb = {**a, "domain": self._section, "img": None}
            self.thumbs.append(self._thumb)
        elif tag == "img":
            self.imgs.append(a)
            if self._thumb is not None:
                self._thumb["img"] = a
        elif tag == "script" and "src" in a:
            self.script_src.append(a["src"])

    def handle_data(self, data):
        if self._text is not None:
            self._text.append(data)

    def handle_endtag(self, tag):
        if tag == "td" and self._text is not None:
            self._row[self._col] = "".join(self._text).strip()
            self._text = None
        elif tag == "table":
            self._table = self._row = None
        elif tag == "figure":
            self._thumb = None
        elif tag == "section":
            self._section = None


def parse(text: str) -> _Page:
    p = _Page()
    p.feed(text)
    return p


def _decode(uri: str) -> Image.Image:
    assert uri.startswith("data:image/png;base64,")
    im = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    im.load()
    return im


def _markdown_cells(md: str, cols: list[str], nth: int) -> dict:
    """``{row: {col: text}}`` of the ``nth`` report.md table with header ``| trainer | <cols> |`` (bold removed)."""
    lines = md.splitlines()
    head = "| " + " | ".join(["trainer"] + cols) + " |"
    i = [k for k, line in enumerate(lines) if line == head][nth]
    out = {}
    for line in lines[i + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        out[cells[0]] = {c: v[2:-2] if v.startswith("**") else v for c, v in zip(cols, cells[1:])}
    return out


def _yellow(im: Image.Image) -> int:
    """Pixels of the prompt colour (#ffd700, blended by the downscaling)."""
    a = np.asarray(im.convert("RGB")).astype(int)
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    return int(((r > 150) & (r - b > 80) & (g - b > 60) & (np.abs(r - g) < 90)).sum())


# --------------------------------------------------------------------------- the file


def test_html_is_self_contained(html_tree):
    text = html_tree["html"].read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text
    page = parse(text)
    assert page.urls and all(u.startswith(("data:image/png;base64,", "#")) for u in page.urls), page.urls
    assert not page.script_src and "<link" not in text and "<iframe" not in text and "@import" not in text
    assert 'http-equiv="Content-Security-Policy"' in text and "default-src 'none'" in text
    # the charts are the PNG files written beside it, embedded byte for byte
    for name in ("domain_holdout_dice", "domain_holdout_nsd", "five_fold_dice", "five_fold_nsd", "case_dice_by_domain"):
        img = next(i for i in page.imgs if i.get("id") == f"chart-{name}")
        assert base64.b64decode(img["src"].split(",", 1)[1]) == (html_tree["report"] / f"{name}.png").read_bytes()


def test_html_tables_hold_the_summary_numbers(html_tree):
    page = parse(html_tree["html"].read_text(encoding="utf-8"))
    dh, nsd = page.tables["domain_holdout_dice"], page.tables["domain_holdout_nsd"]
    res_a = _summary(html_tree, "ResNetTrainer", "domain_A", "test")
    res_b = _summary(html_tree, "ResNetTrainer", "domain_B", "test")
    sam = _summary(html_tree, "SAMBoxTrainer", "domain_A", "test")
    gt = _summary(html_tree, "SAMBoxTrainer", "domain_A", "test_gt_box")
    assert list(res_a["per_domain"]) == ["B"] and list(res_b["per_domain"]) == ["A"]
    a_dice = res_a["per_domain"]["B"]["foreground_mean"]["Dice"]
    b_dice = res_b["per_domain"]["A"]["foreground_mean"]["Dice"]
    assert dh["ResNetTrainer"] == {"A → rest": _f4(a_dice), "B → rest": _f4(b_dice),
                                   "AVG": _f4(np.mean([a_dice, b_dice]))}
    assert nsd["ResNetTrainer"]["B → rest"] == _f4(res_b["per_domain"]["A"]["foreground_mean"]["NSD"])
    assert sam["missing_predictions"] == ["s05"]  # marked *
    assert dh["SAMBoxTrainer"]["A → rest"] == _f4(sam["per_domain"]["B"]["foreground_mean"]["Dice"]) + "*"
    assert dh["SAMBoxTrainer (gt_box)"]["B → rest"] == "–"
    assert dh["SAMBoxTrainer (gt_box)"]["AVG"] == _f4(gt["per_domain"]["B"]["foreground_mean"]["Dice"]) + " (1/2)"
    # five-fold: mean ± sample std over the folds of each fold's mean[label]
    for metric, table in (("Dice", "five_fold_dice"), ("NSD", "five_fold_nsd")):
        v = [_summary(html_tree, "ResNetTrainer", f, "validation")["mean"]["2"][metric] for f in ("0", "1")]
        assert page.tables[table]["ResNetTrainer"]["square (2)"] == f"{np.mean(v):.4f} ± {np.std(v, ddof=1):.4f}"
    # per target domain: per_domain[d].foreground_mean of each test summary
    assert page.tables["domain-B-dice"]["SAMBoxTrainer (gt_box)"]["A → rest"] == _f4(
        gt["per_domain"]["B"]["foreground_mean"]["Dice"])
    assert page.tables["domain-A-nsd"]["ResNetTrainer"]["B → rest"] == _f4(
        res_b["per_domain"]["A"]["foreground_mean"]["NSD"])
    assert page.tables["domain-B-dice"]["SAMBoxTrainer"]["A → rest"].endswith("*")
    # the very text of report.md, table by table
    md = (html_tree["report"] / "report.md").read_text(encoding="utf-8")
    dh_cols, ff_cols = ["A → rest", "B → rest", "AVG"], ["blob (1)", "square (2)", "foreground mean"]
    for name, cols, nth in (("domain_holdout_dice", dh_cols, 0), ("domain_holdout_nsd", dh_cols, 1),
                            ("five_fold_dice", ff_cols, 0), ("five_fold_nsd", ff_cols, 1)):
        assert page.tables[name] == _markdown_cells(md, cols, nth), name


def _case_dice(summary) -> dict:
    return {r["case"]: float(np.mean([m["Dice"] for m in r["metrics"].values() if m["Dice"] is not None]))
            for r in summary["metric_per_case"]}


def test_thumbnails_worst_cases_first(html_tree):
    page = parse(html_tree["html"].read_text(encoding="utf-8"))
    by_dom = {}
    for t in page.thumbs:
        by_dom.setdefault(t["domain"], []).append(t)
    assert sorted(by_dom) == ["A", "B"] and all(len(v) == THUMBS for v in by_dom.values())
    # domain B: the case without prediction first, then the lowest Dice of every test split on B
    assert by_dom["B"][0]["data-case"] == "s05" and "missing" in by_dom["B"][0]["class"]
    assert by_dom["B"][0]["data-row"] == "SAMBoxTrainer" and by_dom["B"][0]["data-split"] == "test"
    on_b = [(d, c, split) for split in (("ResNetTrainer", "domain_A", "test"), ("SAMBoxTrainer", "domain_A", "test"),
                                        ("SAMBoxTrainer", "domain_A", "test_gt_box"))
            for c, d in _case_dice(_summary(html_tree, *split)).items()]
    worst = min(on_b)
    assert (by_dom["B"][1]["data-case"], by_dom["B"][1]["data-row"]) == (worst[1], worst[2][0])
    assert float(by_dom["B"][1]["data-dice"]) == pytest.approx(worst[0], abs=1e-6)
    on_a = sorted(_case_dice(_summary(html_tree, "ResNetTrainer", "domain_B", "test")).items(), key=lambda x: x[1])
    assert [t["data-case"] for t in by_dom["A"]] == [c for c, _ in on_a[:THUMBS]]
    for t in page.thumbs:  # downscaled overlays, not blank
        im = _decode(t["img"]["src"])
        assert im.size == (300, 320) and np.asarray(im.convert("L")).std() > 10
    # the case without prediction still shows its image and reference
    assert "no prediction" in html_tree["html"].read_text(encoding="utf-8")


def test_prompts_drawn_on_the_sam_thumbnails(html_tree, tmp_path, monkeypatch):
    """Every case of domain B, with and without the prompts.json files: the SAM rows' overlays gain the
    prompt boxes, the ResNetTrainer ones are unchanged."""
    res = tmp_path / "results"
    shutil.copytree(html_tree["roots"]["results"], res, ignore=shutil.ignore_patterns("report"))
    monkeypatch.setenv("SAMUNET_raw", str(html_tree["roots"]["raw"]))
    monkeypatch.setenv("SAMUNET_preprocessed", str(html_tree["roots"]["preprocessed"]))
    monkeypatch.setenv("SAMUNET_results", str(res))

    def thumbs(name):
        r = build_report(650, tmp_path / name, charts=False, html=True, thumbnails=9)
        page = parse(r["html"].read_text(encoding="utf-8"))
        return {(t["data-row"], t["data-split"], t["data-case"]): _decode(t["img"]["src"])
                for t in page.thumbs if t["domain"] == "B"}

    with_prompts = thumbs("with")
    for f in res.rglob("prompts.json"):
        f.unlink()
    without = thumbs("without")
    assert with_prompts.keys() == without.keys() and len(with_prompts) == 9  # 3 + (2 + 1 missing) + 3 cases
    for key, im in with_prompts.items():
        a, b = np.asarray(im.convert("RGB")), np.asarray(without[key].convert("RGB"))
        if key[0] == "ResNetTrainer" or key[2] == "s05" and key[1] == "test":  # no prompts recorded
            assert np.array_equal(a, b), key
        else:
            assert _yellow(im) > _yellow(without[key]) + 20, key


def test_cli_html_options_and_missing_raw_image(html_tree, tmp_path, monkeypatch):
    for var, sub in (("SAMUNET_raw", "raw"), ("SAMUNET_preprocessed", "preprocessed"), ("SAMUNET_results", "results")):
        monkeypatch.setenv(var, str(html_tree["roots"][sub]))
    plain = build_report(650, tmp_path / "plain", charts=False)
    assert plain["html"] is None and not (tmp_path / "plain" / "report.html").exists()
    assert main(["-d", "650", "-o", str(tmp_path / "bare"), "--html", "--no_charts", "--thumbnails", "0"]) == 0
    page = parse((tmp_path / "bare" / "report.html").read_text(encoding="utf-8"))
    assert not page.imgs and not page.thumbs and page.tables["domain_holdout_dice"]
    assert {p.name for p in (tmp_path / "bare").iterdir()} == {"report.md", "report.csv", "report.html"}
    assert (tmp_path / "bare" / "report.md").read_text() == (tmp_path / "plain" / "report.md").read_text()
    with pytest.raises(SystemExit):
        main(["-d", "650", "--html", "--thumbnails", "-1"])
    # without its raw image a thumbnail is a note, and the report is still written
    raw = tmp_path / "raw"
    shutil.copytree(html_tree["roots"]["raw"], raw)
    for f in (raw / DATASET / "imagesTr").glob("s05_*"):
        f.unlink()
    monkeypatch.setenv("SAMUNET_raw", str(raw))
    text = build_report(650, tmp_path / "noraw", charts=False, html=True, thumbnails=1)["html"].read_text()
    assert "no overlay: FileNotFoundError" in text and "s05_0000.nii.gz" in text


# --------------------------------------------------------------------------- in a browser


@pytest.fixture(scope="module")
def chromium() -> str:
    """The Chromium executable (checked before the results tree is built)."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        exe = shutil.which(name)
        if exe:
            return exe
    msg = "no Chromium found (Debian: apt-get install chromium; .ci/run installs it)"
    if os.environ.get("SAMUNET_REQUIRE_BROWSER") == "1":
        pytest.fail(msg + " and SAMUNET_REQUIRE_BROWSER=1")
    pytest.skip(msg)


def _run_chromium(exe, profile, *args, timeout=180) -> subprocess.CompletedProcess:
    """Headless Chromium, offline: no first-run, sync, extension or component-update traffic."""
    cmd = [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
           "--no-default-browser-check", "--disable-extensions", "--disable-sync", "--disable-background-networking",
           "--disable-component-update", "--mute-audio", f"--user-data-dir={profile}", "--enable-logging=stderr",
           "--v=0", "--window-size=1200,2000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def _console_problems(stderr: str) -> list[str]:
    """Console messages of the page (errors, CSP violations, uncaught exceptions): the page logs none."""
    return [line for line in stderr.splitlines()
            if ":CONSOLE" in line or "Uncaught" in line or "Content Security Policy" in line]


def test_report_in_headless_chromium(chromium, html_tree, tmp_path):
    exe = chromium
    url = html_tree["html"].resolve().as_uri()
    shot = tmp_path / "shot.png"
    r = _run_chromium(exe, tmp_path / "profile1", f"--screenshot={shot}", "--virtual-time-budget=5000", url)
    assert r.returncode == 0 and shot.is_file(), r.stderr[-3000:]
    assert not _console_problems(r.stderr), _console_problems(r.stderr)
    with Image.open(shot) as im:
        assert im.size == (1200, 2000)
        rgb = np.asarray(im.convert("RGB")).astype(int)
    assert rgb.std() > 10  # not a blank page
    # the first chart (matplotlib's default blue bars, #1f77b4) is rendered in the viewport
    blue = (np.abs(rgb - np.array([31, 119, 180])).sum(axis=-1) < 30).sum()
    assert blue > 500, blue

    r = _run_chromium(exe, tmp_path / "profile2", "--virtual-time-budget=5000", "--dump-dom", url)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not _console_problems(r.stderr), _console_problems(r.stderr)
    dom = parse(r.stdout)
    n_img = len(parse(html_tree["html"].read_text(encoding="utf-8")).imgs)
    assert n_img == 5 + 2 * THUMBS  # five charts, the thumbnails of domains A and B
    # the page's own script ran after load: every <img> decoded (naturalWidth > 0)
    assert dom.body.get("data-images") == str(n_img), dom.body
    assert dom.body.get("data-images-decoded") == str(n_img) and dom.body.get("data-images-ok") == "true"
    # the rendered tables hold the numbers of summary.json
    res_a = _summary(html_tree, "ResNetTrainer", "domain_A", "test")
    gt = _summary(html_tree, "SAMBoxTrainer", "domain_A", "test_gt_box")
    assert dom.tables["domain_holdout_dice"]["ResNetTrainer"]["A → rest"] == _f4(
        res_a["per_domain"]["B"]["foreground_mean"]["Dice"])
    assert dom.tables["domain_holdout_nsd"]["SAMBoxTrainer (gt_box)"]["A → rest"] == _f4(
        gt["per_domain"]["B"]["foreground_mean"]["NSD"])
    v = [_summary(html_tree, "ResNetTrainer", f, "validation")["foreground_mean"]["Dice"] for f in ("0", "1")]
    assert dom.tables["five_fold_dice"]["ResNetTrainer"]["foreground mean"] == (
        f"{np.mean(v):.4f} ± {np.std(v, ddof=1):.4f}")
    assert dom.tables == parse(html_tree["html"].read_text(encoding="utf-8")).tables
