"""`ablate data build-amazon`, `ablate data build-movielens` and `ablate features extract`."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _options(args):
    from .data.build import BuildOptions

    return BuildOptions(name=args.name or Path(args.out).name, k_user=args.k,
                        k_item=args.k_item, split=args.split, seed=args.seed)


def _report(manifest: dict, out: str) -> None:
    counts = manifest["counts"]
    print(f"{out}: {counts['users']} users, {counts['items']} items, {counts['interactions']} interactions "
          f"(train {counts['train']} / valid {counts['valid']} / test {counts['test']}); "
          f"{counts['duplicates_dropped']} duplicate rows dropped, k-core rounds {manifest['k_core']['rounds']}")
    if manifest.get("skipped"):
        print(f"  skipped malformed lines: {json.dumps(manifest['skipped'])}")
    for key in ("items_without_meta", "items_without_details", "items_without_poster"):
        if manifest.get(key) is not None:
            print(f"  {key.replace('_', ' ')}: {manifest[key]}")
    for modality, entry in (manifest.get("features") or {}).items():
        print(f"  {modality}: {', '.join(entry['variants'])} (default {entry.get('default')})")


def cmd_build_amazon(args) -> int:
    from .data import DataError
    from .data.amazon import build_amazon
    from .data.recipe import AMAZON_RECIPE

    try:
        manifest = build_amazon(args.reviews, args.out, meta=args.meta, images=args.images, options=_options(args),
                                recipe=args.recipe or AMAZON_RECIPE, skip_malformed=args.skip_malformed,
                                image_dim=args.image_dim)
    except (DataError, ValueError) as exc:
        print(f"ablate: {exc}", file=sys.stderr)
        return 2
    _report(manifest, args.out)
    return 0


def cmd_build_movielens(args) -> int:
    from .data import DataError
    from .data.movielens import build_movielens
    from .data.recipe import MOVIELENS_RECIPE

    try:
        manifest = build_movielens(args.ratings, args.items, args.out, texts=args.texts, posters=args.posters,
                                   options=_options(args), recipe=args.recipe or MOVIELENS_RECIPE,
                                   item_encoding=args.item_encoding)
    except (DataError, ValueError) as exc:
        print(f"ablate: {exc}", file=sys.stderr)
        return 2
    _report(manifest, args.out)
    return 0


def cmd_features_extract(args) -> int:
    from .data import DataError
    from .features import extract

    image_options = {k: v for k, v in (("resize", args.resize), ("crop", args.crop), ("normalize", args.normalize))
                     if v is not None}
    try:
        entry = extract(args.path, args.modality, args.encoder, weights=args.weights, name=args.name,
                        batch_size=args.batch_size, device=args.device, make_default=args.default,
                        progress=not args.quiet, workers=args.workers, **image_options)
    except (DataError, ValueError, FileNotFoundError) as exc:
        print(f"ablate: {exc}", file=sys.stderr)
        return 2
    print(f"{args.path}: wrote {entry['file']} ({entry['items']} x {entry['dim']}, {entry['seconds']} s on "
          f"{entry['device']})" + (f", {entry['missing']} items without an image got the mean" if "missing" in entry else ""))
    return 0


def _build_common(p: argparse.ArgumentParser, k_default: int) -> None:
    p.add_argument("--out", required=True, help="dataset directory to write")
    p.add_argument("--name", help="dataset name (the .inter file's stem); default: the directory's name")
    p.add_argument("-k", "--k", type=int, default=k_default, help=f"k-core: minimum interactions per user "
                   f"(and per item unless --k-item), repeated until stable; default {k_default}")
    p.add_argument("--k-item", type=int, help="minimum interactions per item (default: --k)")
    p.add_argument("--split", default="random", choices=["random", "time"],
                   help="per user: shuffled 8:1:1 (MMRec) or ordered by timestamp")
    p.add_argument("--seed", type=int, default=0, help="split seed")
    p.add_argument("--recipe", help="item text template, e.g. '{title}.[ Brand: {brand}.]' ([...] = optional part)")


def add_data_commands(data_sub) -> None:
    amazon = data_sub.add_parser("build-amazon", help="Amazon review dump (2014/2018) -> dataset directory")
    amazon.add_argument("--reviews", required=True, help="reviews .json or .json.gz (one object per line)")
    amazon.add_argument("--meta", help="metadata .json or .json.gz (item texts)")
    amazon.add_argument("--images", help="image_features_*.b (10-byte ASIN + float32 vector per record)")
    amazon.add_argument("--image-dim", type=int, default=4096)
    amazon.add_argument("--skip-malformed", action="store_true",
                        help="skip and count malformed lines instead of stopping at the first")
    _build_common(amazon, 5)
    amazon.set_defaults(func=cmd_build_amazon)

    ml = data_sub.add_parser("build-movielens", help="MovieLens atomic files (+ texts, posters) -> dataset directory")
    ml.add_argument("--ratings", required=True, help="ml-100k.inter (RecBole atomic file)")
    ml.add_argument("--items", required=True, help="ml-100k.item")
    ml.add_argument("--texts", help="CSV keyed by movie_id with description and director")
    ml.add_argument("--posters", help="folder of <movie_id>.jpg")
    ml.add_argument("--item-encoding", default="utf-8", help="text encoding of the .item file")
    _build_common(ml, 0)
    ml.set_defaults(func=cmd_build_movielens)


def add_features_commands(sub) -> None:
    features = sub.add_parser("features", help="item encoders")
    features_sub = features.add_subparsers(dest="features_command", required=True)
    ext = features_sub.add_parser("extract", help="encode a dataset's items into a new feature variant")
    ext.add_argument("path", help="dataset directory (with item_text.tsv / item_image.tsv)")
    ext.add_argument("--modality", required=True, choices=["text", "image"])
    ext.add_argument("--encoder", required=True,
                     help="text: a sentence-transformers name or folder; image: resnet50, vit_b_16, "
                          "efficientnet_lite0, timm:<name>")
    ext.add_argument("--weights", help="image weights: a local .pth, a torchvision weights name, or 'random'")
    ext.add_argument("--name", help="variant name (default: from the encoder name)")
    ext.add_argument("--default", action="store_true", help="make this variant the modality's default")
    ext.add_argument("--batch-size", type=int, default=64)
    ext.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    ext.add_argument("--workers", type=int, default=0, help="threads decoding images")
    ext.add_argument("--resize", type=int, help="image: shorter side before the centre crop (default 256)")
    ext.add_argument("--crop", type=int, help="image: centre crop (default 224)")
    ext.add_argument("--normalize", choices=["imagenet", "inception"], help="image: override the encoder's")
    ext.add_argument("--quiet", action="store_true", help="no progress bar")
    ext.set_defaults(func=cmd_features_extract)
