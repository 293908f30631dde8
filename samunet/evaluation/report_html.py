"""``samunet_report --html``: one self-contained ``report.html``.

Everything is inside the file: the charts and the overlay thumbnails are embedded as base64
PNG ``data:`` URIs, the CSS is inline, the one small script (it only records on ``<body>``
whether every image decoded) is inline, and a Content-Security-Policy forbids loading anything
else, so the page opens offline, from an e-mail attachment or an archive.

Sections: the domain hold-out and five-fold tables (the same cells, with the same formatting,
as report.md: :func:`samunet.evaluation.report_tables.cell_text`) and their charts; one section
per target domain with its per-domain table and overlay thumbnails of its worst cases (no
prediction first, then lowest Dice) over the test splits of the domain folds (the validation
splits when there are no domain folds), drawn by :func:`samunet.evaluation.overlays.plot_case`
with the prompts of a ``prompts.json`` beside the predictions; the cases missing a prediction
and the folds not evaluated.

A thumbnail needs the image and reference in ``SAMUNET_raw`` and the prediction beside the
summary; when one is missing the thumbnail is replaced by a note saying why.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
import re
import tempfile
from pathlib import Path

from samunet.evaluation.report_render import not_evaluated_rows
from samunet.evaluation.report_tables import CaseRef, ResultsTree, Table, cell_text
from samunet.utilities.file_io import atomic_path, load_json

logger = logging.getLogger(__name__)

DEFAULT_THUMBNAILS = 6  # overlay thumbnails per target-domain section
THUMBNAIL_WIDTH = 300  # pixels (the overlays are drawn at 600 x 640 and downscaled)

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; max-width: 1400px;
       padding: 1em 2em; color: #222; background: #fff; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { border-bottom: 2px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
h3 { margin-top: 1.4em; } nav { background: #f4f6f8; padding: 0.5em 1em; border-radius: 6px; }
nav a { margin-right: 1em; } p.note { color: #555; font-size: 0.92em; }
table { border-collapse: collapse; margin: 0.6em 0 1em; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; white-space: nowrap; }
th { background: #f0f2f5; } tbody th { text-align: left; font-weight: normal; }
td.best { background: #e3f4e3; font-weight: bold; } td.na { color: #999; text-align: center; }
table.list td { text-align: left; white-space: normal; }
figure.chart { margin: 0.5em 0 1.5em; } figure.chart img { max-width: 100%; height: auto; border: 1px solid #eee; }
div.thumbs { display: flex; flex-wrap: wrap; gap: 12px; }
figure.thumb { margin: 0; border: 1px solid #ddd; border-radius: 4px; padding: 4px; background: #fafafa; }
figure.thumb img { width: 100%; height: auto; display: block; }
figure.thumb figcaption { font-size: 0.8em; margin-top: 4px; word-break: break-all; }
figure.thumb.missing { border-color: #d33; } .nothumb { color: #a33; font-size: 0.85em; padding: 1em 0.5em; }
footer { margin-top: 3em; color: #888; font-size: 0.85em; }
"""

SCRIPT = """
window.addEventListener("load", function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) { ok++; } }
  document.body.dataset.images = String(imgs.length);
  document.body.dataset.imagesDecoded = String(ok);
  document.body.dataset.imagesOk = ok === imgs.length ? "true" : "false";
});
"""


def _e(s) -> str:
    return html.escape(str(s), quote=True)


def png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def table_html(t: Table, table_id: str) -> str:
    """A table of the report: the cells as in report.md (best of a column: class ``best``)."""
    if not t.rows:
        return '<p class="note"><em>no results</em></p>'
    head = "".join(f'<th scope="col">{_e(c)}</th>' for c in ["trainer"] + t.columns)
    body = []
    for r in t.rows:
        tds = []
        for c in t.columns:
            s = cell_text(t, r, c)
            cls = "best" if r in t.best.get(c, set()) else ("na" if s == "–" else "")
            tds.append(f'<td data-col="{_e(c)}"' + (f' class="{cls}"' if cls else "") + f">{_e(s)}</td>")
        body.append(f'<tr data-row="{_e(r)}"><th scope="row">{_e(r)}</th>{"".join(tds)}</tr>')
    return (f'<table class="results" id="{_e(table_id)}" data-metric="{_e(t.metric)}">'
            f"<caption>{_e(t.title)}</caption><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")


def _list_table(header: list[str], rows: list[list], table_id: str) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f'<table class="list" id="{_e(table_id)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _chart(charts: dict[str, Path], name: str, alt: str) -> str:
    p = charts.get(name)
    if p is None or not Path(p).is_file():
        return ""
    return (f'<figure class="chart"><img id="chart-{_e(name)}" alt="{_e(alt)}" '
            f'src="{png_data_uri(Path(p).read_bytes())}"></figure>')


# --------------------------------------------------------------------------- thumbnails


class _Thumbnailer:
    """Draws the overlay of a :class:`CaseRef` with :func:`overlays.plot_case` and downscales it."""

    def __init__(self, dataset_name: str, width: int, workdir: Path):
        self.dataset_name, self.width, self.workdir = dataset_name, int(width), workdir
        self._datasets: dict[Path, tuple] = {}
        self._prompts: dict[Path, dict] = {}
        self._n = 0
        self.failures: set[str] = set()  # reasons already logged

    def _dataset(self, model: Path):
        if model not in self._datasets:
            from samunet.evaluation.overlays import _dataset_json
            from samunet.imageio import reader_writer_for

            dj = _dataset_json(self.dataset_name, model)
            io_ = reader_writer_for(dj["file_ending"], dj.get("overwrite_image_reader_writer"))
            labels = {}
            for k, v in (dj.get("labels") or {}).items() if isinstance(dj.get("labels"), dict) else ():
                try:
                    if int(v) != 0:
                        labels[int(v)] = k
                except (TypeError, ValueError):  # a region label (list of values): not drawn
                    pass
            self._datasets[model] = (dj, io_, labels)
        return self._datasets[model]

    def _prompts_of(self, folder: Path) -> dict:
        if folder not in self._prompts:
            f = folder / "prompts.json"
            self._prompts[folder] = load_json(f) if f.is_file() else {}
        return self._prompts[folder]

    def __call__(self, ref: CaseRef) -> bytes:
        from PIL import Image

        from samunet.evaluation.overlays import largest_object_slice, plot_case
        from samunet.paths import raw_root

        e = ref.evaluation
        folder = ref.prediction_folder
        dj, io_, labels = self._dataset(folder.parents[1])
        fe = dj["file_ending"]
        raw = raw_root() / self.dataset_name
        img_files = sorted((raw / "imagesTr").glob(f"{ref.case}_[0-9][0-9][0-9][0-9]{fe}"))
        ref_file = raw / "labelsTr" / f"{ref.case}{fe}"
        if not img_files:
            raise FileNotFoundError(f"no image {raw / 'imagesTr' / (ref.case + '_0000' + fe)}")
        if not ref_file.is_file():
            raise FileNotFoundError(f"no reference {ref_file}")
        image, props = io_.read_images(img_files)
        seg = io_.read_seg(ref_file)[0][0]
        pred_file = folder / f"{ref.case}{fe}"
        pred = io_.read_seg(pred_file)[0][0] if pred_file.is_file() else None
        if pred is not None and pred.shape != seg.shape:
            raise ValueError(f"{pred_file.name} has shape {pred.shape}, reference {seg.shape}")
        z = largest_object_slice(seg, pred)
        if pred is None:
            dtxt = "prediction missing"
        else:
            dtxt = "Dice n/a (empty)" if math.isnan(ref.dice) else f"Dice {ref.dice:.3f}"
        sp = [float(s) for s in props.get("spacing", [1.0, 1.0, 1.0])]
        title = (f"{ref.case}  |  domain {ref.domain}  |  {dtxt}\n"
                 f"{e.row} fold {e.fold} {folder.name}  |  slice {z + 1}/{seg.shape[0]}")
        self._n += 1
        png = self.workdir / f"{self._n}.png"
        plot_case(image, seg, pred, z, png, title, labels, (sp[-2], sp[-1]) if len(sp) >= 2 else (1.0, 1.0),
                  self._prompts_of(folder).get(ref.case))
        with Image.open(png) as im:
            im = im.convert("RGB")
            h = max(1, round(im.height * self.width / im.width))
            im = im.resize((self.width, h), Image.LANCZOS)
            buf = io.BytesIO()
            im.save(buf, format="PNG", optimize=True)
        return buf.getvalue()


def _thumb_html(ref: CaseRef, draw: _Thumbnailer) -> str:
    e = ref.evaluation
    dice = "no prediction" if ref.missing else ("Dice n/a (empty)" if math.isnan(ref.dice) else f"Dice {ref.dice:.4f}")
    caption = (f"<strong>{_e(ref.case)}</strong> · {_e(dice)}<br>{_e(e.row)} · fold {_e(e.fold)} · "
               f"{_e(ref.prediction_folder.name)}")
    try:
        img = f'<img alt="overlay of {_e(ref.case)}" src="{png_data_uri(draw(ref))}">'
    except Exception as ex:  # raw data absent, unreadable file...: a note, not a failed report
        if str(ex) not in draw.failures:
            draw.failures.add(str(ex))
            logger.warning("report.html: no overlay for %s (%s): %s", ref.case, ref.prediction_folder, ex)
        img = f'<div class="nothumb">no overlay: {_e(type(ex).__name__)}: {_e(ex)}</div>'
    cls = "thumb missing" if ref.missing else "thumb"
    dice_attr = "" if math.isnan(ref.dice) else f"{ref.dice:.6f}"
    return (f'<figure class="{cls}" style="width: {draw.width}px" data-case="{_e(ref.case)}" data-row="{_e(e.row)}" '
            f'data-fold="{_e(e.fold)}" data-split="{_e(ref.prediction_folder.name)}" data-dice="{dice_attr}">'
            f"{img}<figcaption>{caption}</figcaption></figure>")


# --------------------------------------------------------------------------- page


def _slug(s: str, used: set) -> str:
    base = re.sub(r"[^A-Za-z0-9_-]+", "_", s) or "domain"
    slug, i = base, 1
    while slug in used:
        i += 1
        slug = f"{base}_{i}"
    used.add(slug)
    return slug


def report_html(tree: ResultsTree, tables: dict[str, Table], missing: list[dict], charts: dict[str, Path],
                domain_tables: dict[str, tuple[Table, Table]], worst: dict[str, list[CaseRef]],
                missing_as_zero: bool = False, thumbnail_width: int = THUMBNAIL_WIDTH) -> str:
    """The text of report.html (see the module docstring)."""
    which = "counting a missing case as Dice 0 / NSD 0" if missing_as_zero else "over the evaluated cases"
    used: set = set()
    slugs = {d: _slug(d, used) for d in domain_tables.keys() | worst.keys()}
    domains = sorted(slugs)
    h = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
         f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
         '<meta name="viewport" content="width=device-width, initial-scale=1">',
         f"<title>samunet report: {_e(tree.dataset_name)}</title><style>{CSS}</style></head><body>",
         f"<h1>samunet report: {_e(tree.dataset_name)}</h1>",
         f'<p class="note">Results folder: <code>{_e(tree.folder)}</code>. {len(tree.evaluations)} summary.json files '
         f"read. Means are {which}; <code>*</code> marks a value from a summary with missing predictions (listed "
         "below). Highlighted: best of the column.</p>",
         '<nav><a href="#domain-holdout">Domain hold-out</a><a href="#five-fold">Five-fold</a>'
         + "".join(f'<a href="#domain-{slugs[d]}">{_e(d)}</a>' for d in domains)
         + '<a href="#missing">Missing predictions</a><a href="#not-evaluated">Not evaluated</a></nav>']
    h += ['<section id="domain-holdout"><h2>Domain hold-out</h2>',
          '<p class="note">Rows: trainers (and prompt modes); columns: the source domain the fold was trained on; '
          "cell: mean over the target domains of the per-domain foreground mean (from "
          "<code>fold_domain_&lt;A&gt;/test*/summary.json</code>); AVG: mean of the row.</p>"]
    for name in ("domain_holdout_dice", "domain_holdout_nsd"):
        t = tables[name]
        h += [f"<h3>{_e(t.metric)}</h3>", table_html(t, name), _chart(charts, name, t.title)]
    if "case_dice_by_domain" in charts:
        h += ["<h3>Case Dice per target domain</h3>", _chart(charts, "case_dice_by_domain", "case Dice per domain")]
    h += ["</section>", '<section id="five-fold"><h2>Five-fold cross-validation</h2>',
          '<p class="note">Folds 0-4, <code>validation*/summary.json</code>: mean ± sample standard deviation over '
          "the folds of the per-fold means, per class.</p>"]
    for name in ("five_fold_dice", "five_fold_nsd"):
        t = tables[name]
        h += [f"<h3>{_e(t.metric)}</h3>", table_html(t, name), _chart(charts, name, t.title)]
    h += ["</section>", '<section id="domains"><h2>Per target domain</h2>',
          '<p class="note">Per target domain: its foreground mean per fold (from <code>per_domain</code> of the test '
          "summaries of the domain folds, the validation summaries when there are none) and overlays of its worst "
          "cases, no prediction first, then lowest Dice (reference: solid, prediction: dashed, prompts: dotted "
          "boxes and stars).</p>"]
    with tempfile.TemporaryDirectory(prefix="samunet_report_") as tmp:
        draw = _Thumbnailer(tree.dataset_name, thumbnail_width, Path(tmp))
        for d in domains:
            h.append(f'<section class="domain" id="domain-{slugs[d]}" data-domain="{_e(d)}">'
                     f"<h3>Target domain {_e(d)}</h3>")
            for t in domain_tables.get(d, ()):
                h.append(table_html(t, f"domain-{slugs[d]}-{t.metric.lower()}"))
            if worst.get(d):
                h.append(f"<h4>Worst cases ({len(worst[d])})</h4>")
                h.append('<div class="thumbs">' + "".join(_thumb_html(r, draw) for r in worst[d]) + "</div>")
            h.append("</section>")
    h.append("</section>")
    h.append('<section id="missing"><h2>Cases missing a prediction</h2>')
    if missing:
        h.append(_list_table(["trainer", "fold", "split", "case"],
                             [[m["trainer"], m["fold"], m["split"], m["case"]] for m in missing], "missing-table"))
    else:
        h.append("<p>None: every reference case has a prediction.</p>")
    h.append('</section><section id="not-evaluated"><h2>Not evaluated</h2>')
    rows = not_evaluated_rows(tree)
    if rows:
        h.append(_list_table(["trainer", "fold", "split", "reason"],
                             [[r["trainer"], r["fold"], r["split"], r["reason"]] for r in rows], "not-evaluated-table"))
    else:
        h.append("<p>Every fold found has its summary.json files.</p>")
    h += ["</section>", "<footer>Written by samunet_report --html; self-contained (no external resources).</footer>",
          f"<script>{SCRIPT}</script>", "</body></html>", ""]
    return "\n".join(h)


def write_html(path: Path, *args, **kwargs) -> Path:
    """Write :func:`report_html` to ``path`` atomically."""
    text = report_html(*args, **kwargs)
    with atomic_path(path, suffix=".html") as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return path
