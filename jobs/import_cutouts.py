"""spark-submit entry point: import existing cutouts (a Parquet file with objid and jpeg, or a folder of
<objid>.jpg/.png files) into lake/cutouts -- `skyclass cutouts --import PATH`.

    spark-submit jobs/import_cutouts.py --import PATH [--name NAME] --conf conf/cluster.yaml [--set key=value ...]
"""
import sys

from skyclass.cli import job_entry

main = job_entry("cutouts")

if __name__ == "__main__":
    sys.exit(main())
