"""`python -m cfgedu prepare-imagenet64`: official downsampled batches or a raw ImageNet folder -> .npy files."""
from __future__ import annotations

import os
from pathlib import Path

from ._paths import output_folder

HELP = ("Convert ImageNet 64x64 once into memory-mapped arrays (DIR/train_images.npy uint8 N×3×64×64, "
        "DIR/train_labels.npy int64 0..999, the same for val, DIR/manifest.json). Sources: the official "
        "downsampled batches (pickles, read with a restricted unpickler) or a raw folder of one sub-folder of "
        "JPEGs per class. Rerunning an interrupted conversion resumes it.")


def add_arguments(parser):
    parser.add_argument("--src", type=Path, required=True,
                        help="folder with train_data_batch_1..10 and val_data (pickles), or the raw training folder")
    parser.add_argument("--out", type=Path, default=Path("data/imagenet64"), help="output folder")
    parser.add_argument("--format", choices=("pickles", "folder"), default="pickles", help="what --src holds")
    parser.add_argument("--resize", choices=("box", "center-crop"), default="box",
                        help="folder only: box = area-average the whole image (as the official files), "
                             "center-crop = ADM's BOX halving + BICUBIC + centre crop")
    parser.add_argument("--val-src", type=Path, default=None,
                        help="folder only: a validation folder with the same class sub-folders")
    parser.add_argument("--map-clsloc", type=Path, default=None,
                        help="pickles only: the devkit's map_clsloc.txt; relabels to the sorted-WNID order of "
                             "ADM/torchvision (default: keep the files' map_clsloc order, minus 1)")
    parser.add_argument("--workers", type=int, default=max(1, min(4, os.cpu_count() or 1)),
                        help="worker processes (pickles: each holds one ~1.6 GB batch and its array in memory; "
                             "the conversion needs ~16 GB of scratch disk beside the ~16 GB output)")


def run(args) -> None:
    from ..data.imagenet64_convert import convert_folder, convert_pickles

    output_folder(args.out)
    if args.format == "pickles":
        if args.val_src is not None:
            raise ValueError("--val-src applies to --format folder only (val_data is read from --src)")
        manifest = convert_pickles(args.src, args.out, map_clsloc=args.map_clsloc, workers=args.workers)
    else:
        if args.map_clsloc is not None:
            raise ValueError("--map-clsloc applies to --format pickles only (folders use sorted class names)")
        manifest = convert_folder(args.src, args.out, resize=args.resize, val_src=args.val_src, workers=args.workers)
    sizes = ", ".join(f"{split} {n:,}" for split, n in manifest["splits"].items())
    print(f"wrote {args.out}: {sizes} images, {manifest['num_classes']} classes, labels in "
          f"{manifest['label_order']} order")
