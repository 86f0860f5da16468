"""Building the SparkSession from config. Only entry points (``jobs/``, the CLI, test fixtures) call this: library
functions take ``spark`` as an argument."""
from __future__ import annotations

import os
import sys

from skyclass.config import SparkConfig

# Spark warnings that are not problems, held at ERROR on the driver unless SKYCLASS_VERBOSE=1 (--verbose):
# DAGScheduler's "Broadcasting large task binary with size ..." comes once per stage of an MLlib tree model
# (hundreds of lines in an evaluation with baselines); it is a size note, nothing a user can or need change.
# netlib's "Failed to load implementation from:dev.ludovic.netlib.blas.JNIBLAS" (and VectorBLAS) comes at the first
# MLlib fit: no native BLAS here, so MLlib uses its Java one, which gives the same results.
QUIET_SPARK_LOGGERS = ("org.apache.spark.scheduler.DAGScheduler", "dev.ludovic.netlib")


def build_spark(conf: SparkConfig):
    """Create (or return the running) SparkSession described by ``conf``.

    Parameters
    ----------
    conf : SparkConfig
        ``master`` None leaves the master to ``spark-submit``.

    Returns
    -------
    pyspark.sql.SparkSession
    """
    from pyspark.sql import SparkSession

    # Executors must run the same interpreter as the driver (the project's venv), or pickled functions break.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(conf.app_name)
    if conf.master:
        builder = builder.master(conf.master)
    settings = {
        "spark.sql.shuffle.partitions": str(conf.shuffle_partitions),
        "spark.driver.memory": conf.driver_memory,
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.session.timeZone": "UTC",
        # Parquet timestamps as microseconds: Petastorm and pandas read INT96 poorly.
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    }
    settings.update(conf.extra)
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    if os.environ.get("SKYCLASS_VERBOSE") != "1":
        quiet_spark_warnings(spark)
    return spark


def quiet_spark_warnings(spark) -> None:
    """Set the driver's :data:`QUIET_SPARK_LOGGERS` to ERROR (log4j 2, through the JVM gateway)."""
    jvm = spark.sparkContext._jvm
    error = jvm.org.apache.logging.log4j.Level.ERROR
    for name in QUIET_SPARK_LOGGERS:
        jvm.org.apache.logging.log4j.core.config.Configurator.setLevel(name, error)
