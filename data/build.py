"""Builds HeLa, BG or LAR as an array_record TFDS data set, without TensorFlow.

Usage:
  python -m data.build hela --manual-dir ~/Downloads --data-dir ~/tensorflow_datasets
  python -m data.build lar                      # downloads (needs internet)
  python -m data.build bg --config original     # store full-size images

``--manual-dir`` is a folder holding the downloaded archive or the folder it unpacks to.
Without it, the archive is downloaded from its published URL.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import tensorflow_datasets as tfds

from data.builder_base import DEFAULT_CONFIG_NAME, STORAGE_CONFIGS
from data.loader import TFDS_DATASET_NAMES, builder_for


def build(
    name: str,
    *,
    manual_dir: str | None = None,
    data_dir: str | None = None,
    config: str = DEFAULT_CONFIG_NAME,
) -> tfds.core.GeneratorBasedBuilder:
    """Downloads (or reads from ``manual_dir``) and prepares a data set as array_record.

    Args:
      name: "hela", "bg" or "lar".
      manual_dir: a folder holding the archive or its unpacked folder; None downloads.
      data_dir: the TFDS data directory (TFDS's default when None).
      config: a storage config, "short_side_256" (default) or "original".

    Returns:
      The prepared builder; ``builder.as_data_source()`` reads it.

    Raises:
      FileNotFoundError: ``manual_dir`` is given but is not a non-empty folder.
    """
    if manual_dir is not None:
        manual_dir = os.path.expanduser(manual_dir)
        if not os.path.isdir(manual_dir) or not os.listdir(manual_dir):
            raise FileNotFoundError(
                f"--manual-dir {manual_dir} is not a non-empty folder; expected the folder "
                f"holding the {name} archive or its unpacked folder"
            )
    if data_dir is not None:
        data_dir = os.path.expanduser(data_dir)
    builder = builder_for(name, data_dir=data_dir, config=config)
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(
            manual_dir=manual_dir,
            # There is no prepared copy of these data sets on TFDS's GCS bucket.
            try_download_gcs=False,
        ),
    )
    return builder


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m data.build", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("name", choices=TFDS_DATASET_NAMES)
    parser.add_argument(
        "--manual-dir",
        help="folder holding the downloaded archive or its unpacked folder (default: download)",
    )
    parser.add_argument(
        "--data-dir", help="TFDS data directory (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)"
    )
    parser.add_argument(
        "--config",
        default=DEFAULT_CONFIG_NAME,
        choices=[config.name for config in STORAGE_CONFIGS],
        help="stored image size (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    builder = build(
        args.name, manual_dir=args.manual_dir, data_dir=args.data_dir, config=args.config
    )
    print(
        f"{args.name}/{args.config}: {builder.info.splits['train'].num_examples} images in "
        f"{builder.data_dir}"
    )


if __name__ == "__main__":
    main()
