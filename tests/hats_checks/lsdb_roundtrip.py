"""Run inside .venv-hats (LSDB's own numpy/pyarrow), never the pinned stack: open a skyclass HATS export with
LSDB the way a survey user would, and report what LSDB sees as JSON for the calling test to judge.

    python tests/hats_checks/lsdb_roundtrip.py CATALOG --cone RA DEC RADIUS_ARCSEC --shift-arcsec 0.5 \
        --work DIR --out result.json

What it reports (the test computes the expected values itself, from the predictions table, with numpy):

* ``class_counts``: rows per ``predicted_class`` of ``lsdb.open_catalog(CATALOG)``;
* ``rows``, ``objids_unique``;
* ``cone_objids``: objids of ``cone_search(RA, DEC, RADIUS_ARCSEC)``;
* ``crossmatch``: the export cross-matched (nearest neighbour within 2 x shift) against a second HATS catalog made
  here -- the same objects moved towards the equator by ``--shift-arcsec``, written with ``write_catalog`` (with its margin cache, so
  objects near a partition border still find their partner) and opened again -- as left objid, right objid and
  separation.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import lsdb
import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("catalog")
    parser.add_argument("--cone", nargs=3, type=float, metavar=("RA", "DEC", "RADIUS_ARCSEC"), required=True)
    parser.add_argument("--shift-arcsec", type=float, default=0.5)
    parser.add_argument("--work", required=True, help="folder for the shifted catalog")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    began = time.monotonic()
    catalog = lsdb.open_catalog(args.catalog)
    frame = catalog.compute()
    report = {
        "lsdb_version": lsdb.__version__,
        "rows": int(len(frame)),
        "objids_unique": bool(frame["objid"].is_unique),
        "npartitions": int(catalog.npartitions),
        "class_counts": {str(k): int(v) for k, v in frame["predicted_class"].value_counts().items()},
    }
    ra, dec, radius = args.cone
    cone = catalog.cone_search(ra, dec, radius).compute()
    report["cone_objids"] = sorted(int(x) for x in cone["objid"])

    shifted = frame[["objid", "ra", "dec"]].reset_index(drop=True).copy()
    # Towards the equator, so no object is pushed over a pole: every one moves by exactly the shift.
    shifted["dec"] = shifted["dec"] + np.where(shifted["dec"] < 0, 1.0, -1.0) * args.shift_arcsec / 3600.0
    right_path = os.path.join(args.work, "shifted")
    second = lsdb.from_dataframe(shifted, ra_column="ra", dec_column="dec", highest_order=10, partition_rows=2000,
                                 margin_threshold=10 * args.shift_arcsec)
    second.write_catalog(right_path, catalog_name="shifted", overwrite=True, progress_bar=False)
    right = lsdb.open_catalog(right_path)
    matched = catalog.crossmatch(right, n_neighbors=1, radius_arcsec=2 * args.shift_arcsec,
                                 suffixes=("_left", "_right"), suffix_method="all_columns",
                                 require_right_margin=True).compute()
    report["shifted_rows"] = int(len(shifted))
    report["crossmatch"] = {
        "left_objid": [int(x) for x in matched["objid_left"]],
        "right_objid": [int(x) for x in matched["objid_right"]],
        "separation_arcsec": [float(x) for x in matched["_dist_arcsec"]],
    }
    report["seconds"] = time.monotonic() - began
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(report, fh)
    print(f"lsdb {lsdb.__version__}: {report['rows']} rows in {report['npartitions']} partitions, "
          f"cone {len(report['cone_objids'])}, crossmatch {len(matched)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
