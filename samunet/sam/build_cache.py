"""``samunet_build_embedding_cache``: encode every preprocessed slice of a dataset once, ahead of training.

    samunet_build_embedding_cache -d 501 [--sam lite_medsam] [--encoder_backend auto] [--part 0 --num_parts 4]

Training builds what it needs by itself; this command does it up front, e.g. on CPU nodes
while GPUs train something else, split over processes or nodes with ``--part/--num_parts``
(parts write different case files and skip cases another process holds a lock on).
``--apm_features`` also fills ProMISe's feature cache (one encoder pass gives both).
"""

from __future__ import annotations

import argparse
import logging
import sys

import torch

from samunet.experiment_planning.plans_io import data_identifier, plans_file_name
from samunet.utilities.sharding import shard
from samunet.experiment_planning.planner import DEFAULT_PLANS_NAME
from samunet.experiment_planning.sam_input import dropped_channels_warning, sam_input_cache_key
from samunet.paths import preprocessed_root
from samunet.sam.embedding_cache import EmbeddingCache
from samunet.sam.encoder_backends import EncoderBackendError
from samunet.sam.registry import SamCheckpointError, build_sam, weights_identity
from samunet.utilities.dataset_name import resolve_dataset
from samunet.utilities.file_io import load_json

logger = logging.getLogger(__name__)


def build_embedding_cache(dataset, sam_name: str | None = None, sam_checkpoint=None, encoder_backend: str = "auto",
                          encoder_precision: str = "fp32", part: int = 0, num_parts: int = 1,
                          plans_name: str = DEFAULT_PLANS_NAME, device=None, apm_features: bool = False,
                          progress: bool = True) -> dict:
    """Encode this part's preprocessed cases; returns ``{"cases": n in this part, "encoded": n}``."""
    shard([], part, num_parts)
    folder = preprocessed_root() / resolve_dataset(dataset)
    plans_file = folder / plans_file_name(plans_name)
    if not plans_file.is_file():
        raise FileNotFoundError(f"{plans_file} not found: run samunet_plan_and_preprocess -d {dataset} first")
    plans = load_json(plans_file)
    ident = data_identifier(plans)
    cases = sorted(p.name[:-len(".npz")] for p in (folder / ident).glob("*.npz"))
    if not cases:
        raise FileNotFoundError(f"no preprocessed cases in {folder / ident}: run samunet_plan_and_preprocess first")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    name = sam_name or plans["sam"]["model"]
    sam = build_sam(name, sam_checkpoint, device).configure_encoder(encoder_backend, encoder_precision)
    sam.configure_from_plan(plans, str(plans_file))  # input channels and encoder batch: what training uses
    if (dropped := dropped_channels_warning(plans)) is not None:
        logger.warning(dropped)
    args = (folder, ident, name, weights_identity(name, sam.checkpoint_path), sam.input_size,
            plans["sam"].get("cache_dtype", "float16"))
    key = sam_input_cache_key(plans)
    cache = EmbeddingCache(*args, precision=encoder_precision, sam_input=key)
    mine = shard(cases, part, num_parts)
    # build() shards again with the same rule; give it every case so that part i means the same cases
    if apm_features:
        from samunet.networks.promise import apm_feature_spec
        from samunet.sam.feature_cache import FeatureCache

        fcache = FeatureCache(*args, taps=apm_feature_spec(sam)["names"], embedding_cache=cache, sam_input=key)
        fcache.build(cases, sam, part=part, num_parts=num_parts, progress=progress)
    encoded = cache.build(cases, sam, part=part, num_parts=num_parts, progress=progress)
    return {"cases": len(mine), "encoded": encoded, "folder": str(cache.folder)}


def main(argv=None) -> None:
    from samunet.sam.cli_arguments import add_encoder_arguments

    p = argparse.ArgumentParser(prog="samunet_build_embedding_cache", description=__doc__.splitlines()[0])
    p.add_argument("-d", required=True, help="dataset ID or name")
    p.add_argument("--sam", default=None, help="SAM backbone (default: the plan's, lite_medsam)")
    p.add_argument("--sam_checkpoint", default=None, help="weights file for the ViT backbones")
    add_encoder_arguments(p)
    p.add_argument("--part", type=int, default=0, help="encode only part i of --num_parts n")
    p.add_argument("--num_parts", type=int, default=1, help="split the cases over n processes or nodes")
    p.add_argument("--apm_features", action="store_true", help="also fill ProMISe's APM feature cache")
    p.add_argument("-p", default=DEFAULT_PLANS_NAME, help="plans name")
    p.add_argument("-device", default=None, choices=["cpu", "cuda"])
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        out = build_embedding_cache(args.d, args.sam, args.sam_checkpoint, args.encoder_backend or "auto",
                                    args.encoder_precision or "fp32", args.part, args.num_parts, args.p, args.device,
                                    args.apm_features)
    except (FileNotFoundError, KeyError, ValueError, SamCheckpointError, EncoderBackendError) as e:
        sys.exit(f"error: {e}")
    print(f"{out['encoded']} of {out['cases']} cases of part {args.part}/{args.num_parts} encoded into {out['folder']}")


if __name__ == "__main__":
    main()
