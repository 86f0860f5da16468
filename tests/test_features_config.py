"""Photometric features declared in config (train.features): checked at load, fetched by extraction from the
SkyServer stand-in, stored in the training table, fed to the network and the MLlib baselines, recorded in the model
package and computed again by scoring. The chain (one extraction and training table for the module, then network,
baselines, scoring and Horovod training) is marked slow; the config and stand-in tests are not.

The fixture catalog carries psfMag and cModelMag columns in which ONLY psf - cModel separates the classes (u..z
and their colours are drawn from one distribution for all classes): a model that really receives the psf - cModel
difference beats chance by far, one that does not stays near it.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from catalog_fixture import make_labelled, make_photometric
from skyclass import features, lake
from skyclass.config import CLASSES, ConfigError, load_config

BANDS = ("u", "g", "r", "i", "z")
FEATURES = ["u", "g", "r", "i", "z", "u_g", "g_r", "r_i", "i_z",
            *(f"psf_minus_cmodel_{b}" for b in BANDS), "dered_cModelMag_r", "psfMag_g_r"]
SET_NAME = "psf_test"
# psf - cModel of each class in the fixture: extended galaxies far above 0, the point sources at 0 and 0.5 (QSOs
# are point sources on the sky; here they get their own offset so that one feature separates all three classes).
OFFSET = {"GALAXY": 1.0, "STAR": 0.0, "QSO": 0.5}
SENTINEL_ROW = 7  # its psfMag_r is -9999


def psf_catalog(n: int, seed: int) -> pd.DataFrame:
    """Labelled objects whose u..z do not depend on the class, with psfMag_* and cModelMag_* (SkyServer's case)."""
    frame = make_labelled(n, seed=seed)
    rng = np.random.default_rng(seed + 100)
    r = rng.uniform(15.0, 19.5, n)
    colours = {"u_g": rng.normal(1.2, 0.5, n), "g_r": rng.normal(0.5, 0.3, n), "r_i": rng.normal(0.3, 0.1, n),
               "i_z": rng.normal(0.2, 0.1, n)}
    mags = {"r": r, "g": r + colours["g_r"], "i": r - colours["r_i"]}
    mags["u"] = mags["g"] + colours["u_g"]
    mags["z"] = mags["i"] - colours["i_z"]
    offset = frame["class"].map(OFFSET).to_numpy(dtype=float)
    for b in BANDS:
        frame[b] = mags[b].round(5)
        cmodel = mags[b] + rng.normal(0.0, 0.01, n)
        frame[f"cModelMag_{b}"] = cmodel.round(5)
        frame[f"psfMag_{b}"] = (cmodel + offset + rng.normal(0.0, 0.05, n)).round(5)
    frame.loc[SENTINEL_ROW, "psfMag_r"] = -9999.0
    return frame


def _settings(root, url, source, **sections):
    ids = [int(v) for v in source["specobjid"]]
    items = [f"lake.root={root / 'lake'}", f"lake.models={root / 'models'}", f"lake.predictions={root / 'predictions'}",
             f"lake.reports={root / 'reports'}", f"skyserver.url={url}", "skyserver.max_queries_per_s=500",
             f"extract.min_specobjid={min(ids)}", f"extract.max_specobjid={max(ids)}", "extract.tasks=2",
             "extract.page_rows=1000", "extract.balance_ranges=false",
             "extract.box_ra_deg=[230.1, 231.1]", "extract.box_dec_deg=[27.2, 28.2]"]
    for section, values in sections.items():
        items += [f"{section}.{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in values.items()]
    return items


@pytest.fixture(scope="module")
def psf_lake(spark, tmp_path_factory):
    """Extract + training table once for the module: the stand-in serves the fixture catalog (and unlabelled
    objects whose psf/cModel columns it derives itself)."""
    from skyclass.extract import extract_catalog, extract_photometric
    from skyclass.standin.server import StandinServer
    from skyclass.training_table import build_training_table

    source = psf_catalog(2400, seed=3)
    photometric = make_photometric(300, seed=4)
    root = tmp_path_factory.mktemp("psf")
    server = StandinServer([source, photometric]).start()
    try:
        conf = load_config(None, _settings(root, server.url, source,
                                           train={"feature_set": SET_NAME, "features": FEATURES},
                                           evaluate={"feature_sets": ["photometric", SET_NAME]}))
        extract_catalog(spark, conf)
        extract_photometric(spark, conf)
        queries = list(server.queries())
    finally:
        server.stop()
    table = build_training_table(spark, conf)
    yield {"conf": conf, "source": source, "photometric": photometric, "queries": queries, "table": table,
           "root": root}


def _split(conf, split: str) -> pd.DataFrame:
    return pq.read_table(lake.training_split_path(conf.lake.path("root"), split)).to_pandas()


def _stats(conf) -> dict:
    with open(lake.training_stats_path(conf.lake.path("root")), encoding="utf-8") as fh:
        return json.load(fh)


def _by_hand(source: pd.DataFrame, objids) -> pd.DataFrame:
    """psf - cModel in r of the fixture rows, computed from the fixture alone (NaN for the sentinel)."""
    rows = source.set_index(source["objid"].astype(np.int64)).loc[list(objids)]
    psf, cmodel = rows["psfMag_r"].to_numpy(float), rows["cModelMag_r"].to_numpy(float)
    return pd.DataFrame({"psf_minus_cmodel_r": np.where(psf > 0, psf - cmodel, np.nan),
                         "psfmag_g_r": rows["psfMag_g"].to_numpy(float) - np.where(psf > 0, psf, np.nan),
                         "cmodelmag_r": cmodel}, index=rows.index)


# --- config ------------------------------------------------------------------------------------------------------

def test_declared_features_are_checked_at_load_with_the_key_named():
    def load(**train):
        return load_config(None, [f"train.{k}={json.dumps(v) if not isinstance(v, str) else v}"
                                  for k, v in train.items()])

    with pytest.raises(ConfigError, match=r"train\.features\[1\]: unknown feature 'petroRadius_r'"):
        load(feature_set="mine", features=["psfMag_r", "petroRadius_r"])
    with pytest.raises(ConfigError, match=r"train\.features\[0\]: feature 'psfMag_y': unknown band 'y'"):
        load(feature_set="mine", features=["psfMag_y"])
    with pytest.raises(ConfigError, match=r"train\.features\[2\]: unknown feature 'psf_minus_model_r'.*derived"):
        load(feature_set="mine", features=["u", "g", "psf_minus_model_r"])  # no such derived kind
    with pytest.raises(ConfigError, match=r"train\.features\[0\]: feature 'g_g': a colour needs two different"):
        load(feature_set="mine", features=["g_g"])
    with pytest.raises(ConfigError, match=r"train\.features: feature 'g_r' is declared more than once"):
        load(feature_set="mine", features=["g_r", "G_R"])
    with pytest.raises(ConfigError, match=r"train\.feature_set is the preset 'photometric'"):
        load(feature_set="photometric", features=["psfMag_r"])
    with pytest.raises(ConfigError, match=r"evaluate\.feature_sets must be one of photometric, paper, mine; got "
                                          r"'other'"):
        load_config(None, ["train.feature_set=mine", "train.features=[psfMag_r]",
                           "evaluate.feature_sets=[photometric, other]"])
    with pytest.raises(ConfigError, match=r"evaluate\.feature_sets must be one of photometric, paper; got 'mine'"):
        load_config(None, ["evaluate.feature_sets=[mine]"])


def test_extraction_columns_follow_the_declaration():
    conf = load_config(None, ["train.feature_set=clarke", "evaluate.feature_sets=[photometric, clarke]",
                              "train.features=[psfMag_r, psf_minus_cmodel_g, dered_cModelMag_r, redshift_asinh, "
                              "dered_psfmag_u_g, psfMagErr_r]"])
    assert features.declared_features(conf.train) == (
        "psfmag_r", "psf_minus_cmodel_g", "dered_cmodelmag_r", "redshift_asinh", "dered_psfmag_u_g", "psfmagerr_r")
    # ra, dec, u..z first (the defaults), then what the features read, once each; redshift comes from SpecObj.
    assert conf.extract.photo_columns == ("ra", "dec", "u", "g", "r", "i", "z", "psfmag_r", "psfmag_g",
                                          "cmodelmag_g", "cmodelmag_r", "extinction_r", "psfmag_u", "extinction_u",
                                          "extinction_g", "psfmagerr_r")
    assert features.features_of_set(conf, "clarke") == features.declared_features(conf.train)
    assert features.features_of_set(conf, "paper") == features.PAPER_FEATURES
    assert load_config(None).extract.photo_columns == ("ra", "dec", "u", "g", "r", "i", "z")


def test_cluster_config_declares_psf_and_cmodel_magnitudes_with_extinction():
    conf = load_config(os.path.join(os.path.dirname(__file__), "..", "conf", "cluster.yaml"))
    names = features.declared_features(conf.train)
    assert {f"dered_psfmag_{b}" for b in BANDS} | {f"dered_cmodelmag_{b}" for b in BANDS} <= set(names)
    assert {f"psf_minus_cmodel_{b}" for b in BANDS} <= set(names)
    columns = set(conf.extract.photo_columns)
    assert {f"{family}_{b}" for family in ("psfmag", "cmodelmag", "extinction") for b in BANDS} <= columns
    assert conf.train.feature_set in conf.evaluate.feature_sets


# --- the stand-in's derived columns ----------------------------------------------------------------------------------

def test_standin_derives_psf_cmodel_and_extinction_and_serves_given_columns_as_they_are():
    from skyclass.standin.sqlite_catalog import SqliteCatalog

    plain = make_labelled(900, seed=5)
    plain.loc[3, "u"] = -9999.0
    given = psf_catalog(50, seed=6)
    catalog = SqliteCatalog([plain])
    result = catalog.query("SELECT s.class, p.objID, p.psfMag_r - p.cModelMag_r AS d, p.extinction_g, "
                           "p.extinction_r, p.psfMag_u, p.petroRad_r FROM SpecObj AS s JOIN PhotoObj AS p "
                           "ON s.bestObjID = p.objID", 10_000)
    got = pd.DataFrame(result.rows, columns=["class", "objid", "d", "extinction_g", "extinction_r", "psfmag_u",
                                             "petrorad_r"])
    by_class = got.groupby("class")["d"].mean()
    assert by_class["GALAXY"] > 0.5 and abs(by_class["STAR"]) < 0.02 and abs(by_class["QSO"]) < 0.02
    # Extinction follows the SDSS coefficients: A_g / A_r = 3.303 / 2.285 for every object.
    np.testing.assert_allclose(got["extinction_g"] / got["extinction_r"], 3.303 / 2.285, rtol=1e-3)
    # A sentinel magnitude gives sentinels in what is derived from it, as SkyServer writes them.
    assert got.loc[got["objid"] == int(plain.loc[3, "objid"]), "psfmag_u"].tolist() == [-9999.0]
    assert (got.loc[got["objid"] != int(plain.loc[3, "objid"]), "psfmag_u"] > 0).all()
    assert (got.loc[got["class"] == "GALAXY", "petrorad_r"].median()
            > 1.5 * got.loc[got["class"] == "STAR", "petrorad_r"].median())
    again = pd.DataFrame(SqliteCatalog([plain]).query("SELECT p.objID, p.psfMag_r FROM PhotoObj AS p", 10_000).rows)
    first = pd.DataFrame(catalog.query("SELECT p.objID, p.psfMag_r FROM PhotoObj AS p", 10_000).rows)
    pd.testing.assert_frame_equal(first, again)  # a hash of the objID, not a random state
    served = SqliteCatalog([given]).query("SELECT p.objID, p.psfMag_r, p.cModelMag_r FROM PhotoObj AS p", 100)
    served = pd.DataFrame(served.rows, columns=["objid", "psf", "cmodel"]).set_index("objid")
    want = given.set_index(given["objid"].astype(np.int64))
    np.testing.assert_array_equal(served.loc[want.index, "psf"], want["psfMag_r"])
    np.testing.assert_array_equal(served.loc[want.index, "cmodel"], want["cModelMag_r"])


# --- the chain -------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_extraction_fetches_the_columns_the_features_need(psf_lake, spark):
    pages = [q for q in psf_lake["queries"] if "FROM SpecObj" in q and "TOP" in q]
    assert pages and all(f"p.psfmag_{b}" in q and f"p.cmodelmag_{b}" in q for q in pages for b in BANDS)
    assert all("p.extinction_r" in q for q in pages)
    catalog = spark.read.parquet(psf_lake["conf"].lake.table("catalog")).toPandas()
    source = psf_lake["source"].set_index(psf_lake["source"]["objid"].astype(np.int64))
    got = catalog.set_index("objid").loc[source.index]
    np.testing.assert_array_equal(got["psfmag_r"], source["psfMag_r"])
    np.testing.assert_array_equal(got["cmodelmag_z"], source["cModelMag_z"])
    assert got["extinction_r"].between(0.0, 0.5).all()  # derived by the stand-in: the fixture has none
    photometric = spark.read.parquet(psf_lake["conf"].lake.table("photometric"))
    assert {"psfmag_r", "cmodelmag_r", "extinction_r"} <= set(photometric.columns)


@pytest.mark.slow
def test_training_table_holds_the_declared_features_computed_from_the_catalog(psf_lake, spark):
    conf, source = psf_lake["conf"], psf_lake["source"]
    frames = [_split(conf, s) for s in lake.SPLITS]
    table = pd.concat(frames, ignore_index=True)
    declared = features.declared_features(conf.train)
    assert set(declared) | set(features.PAPER_FEATURES) <= set(table.columns)
    hand = _by_hand(source, table["objid"])
    np.testing.assert_allclose(table["psf_minus_cmodel_r"], hand["psf_minus_cmodel_r"], atol=1e-4)
    np.testing.assert_allclose(table["psfmag_g_r"], hand["psfmag_g_r"], atol=1e-4)
    catalog = spark.read.parquet(conf.lake.table("catalog")).toPandas().set_index("objid").loc[table["objid"]]
    np.testing.assert_allclose(table["dered_cmodelmag_r"],
                               hand["cmodelmag_r"].to_numpy() - catalog["extinction_r"].to_numpy(), atol=1e-4)
    sentinel = int(source.loc[SENTINEL_ROW, "objid"])
    if sentinel in set(table["objid"]):  # the -9999 never becomes a value: null, the training mean later
        assert table.loc[table["objid"] == sentinel, "psf_minus_cmodel_r"].isna().all()
    stats = _stats(conf)["features"]
    train = frames[0]
    assert stats["psf_minus_cmodel_r"]["mean"] == pytest.approx(train["psf_minus_cmodel_r"].mean(), abs=1e-4)
    assert stats["psf_minus_cmodel_r"]["std"] == pytest.approx(train["psf_minus_cmodel_r"].std(ddof=0), abs=1e-4)


def _matrices(conf, names):
    """The network's input matrices (what Petastorm's transform hands to tf.data) for train and test."""
    from skyclass.input_pipeline import InputSpec, transform_batch

    stats = _stats(conf)["features"]
    spec = InputSpec("tabular", tuple(names), {n: stats[n] for n in names}, 64)
    out = {}
    for split in ("train", "test"):
        batch = transform_batch(_split(conf, split), spec)
        out[split] = (np.stack(batch["features"].to_list()), batch["label"].to_numpy())
    return out


def _fit_accuracy(matrices, seed=0) -> float:
    import tensorflow as tf

    from skyclass.models import build_model, compile_model

    tf.keras.utils.set_random_seed(seed)
    (x, y), (xt, yt) = matrices["train"], matrices["test"]
    model = compile_model(build_model("tabular", n_features=x.shape[1], tabular_units=(32, 16), dropout=0.0),
                          tf.keras.optimizers.Adam(3e-3))
    model.fit(x, y, epochs=25, batch_size=64, verbose=0)
    return float((model.predict(xt, verbose=0).argmax(axis=1) == yt).mean())


@pytest.mark.slow
def test_psf_minus_cmodel_reaches_the_network_and_decides_its_accuracy(psf_lake):
    conf = psf_lake["conf"]
    declared = features.declared_features(conf.train)
    with_psf = _matrices(conf, declared)
    # The column the network gets is the standardised psf - cModel of each object, computed here by hand.
    x, _ = with_psf["train"]
    train = _split(conf, "train")
    hand = _by_hand(psf_lake["source"], train["objid"])["psf_minus_cmodel_r"].to_numpy()
    mean, std = np.nanmean(hand), np.nanstd(hand)
    np.testing.assert_allclose(x[:, declared.index("psf_minus_cmodel_r")],
                               np.where(np.isnan(hand), 0.0, (hand - mean) / std), atol=1e-3)
    majority = max(np.bincount(with_psf["test"][1])) / len(with_psf["test"][1])
    assert _fit_accuracy(with_psf) >= 0.95
    assert _fit_accuracy(_matrices(conf, features.PHOTOMETRIC_FEATURES)) <= majority + 0.1


@pytest.mark.slow
def test_baselines_follow_the_declaration(psf_lake, spark):
    from skyclass.baselines import run_baselines

    conf = psf_lake["conf"]
    root = conf.lake.path("root")
    train = spark.read.parquet(lake.training_split_path(root, "train"))
    test = spark.read.parquet(lake.training_split_path(root, "test"))
    majority = test.groupBy("label").count().agg({"count": "max"}).collect()[0][0] / test.count()
    # One quick MLlib model per set: a tree needs two splits on psf - cModel to separate the three classes.
    names = ["decision_tree"]
    params = {"decision_tree": {"maxDepth": 4}}
    declared = run_baselines(train, test, SET_NAME, features.features_of_set(conf, SET_NAME), names, params=params)
    preset = run_baselines(train, test, "photometric", features.features_of_set(conf, "photometric"), names,
                           params=params)
    for result in declared:
        assert result.features == features.declared_features(conf.train)
        assert result.metrics["accuracy"] >= 0.95, result.name
    for result in preset:
        assert result.metrics["accuracy"] <= majority + 0.1, result.name


def _psf_only_package(conf, version: str) -> str:
    """A tabular package declaring FEATURES whose output depends on psf_minus_cmodel_r alone: GALAXY when it
    is above the training mean, STAR when below (weights set by hand, so the expected labels are known)."""
    import tensorflow as tf

    from skyclass.package import keras_model_bytes, write_package

    declared = features.declared_features(conf.train)
    k = declared.index("psf_minus_cmodel_r")
    inputs = tf.keras.Input(shape=(len(declared),), name="features")
    outputs = tf.keras.layers.Dense(len(CLASSES), activation="softmax")(inputs)
    model = tf.keras.Model(inputs, outputs)
    weights = np.zeros((len(declared), len(CLASSES)), np.float32)
    weights[k, CLASSES.index("GALAXY")], weights[k, CLASSES.index("STAR")] = 5.0, -5.0
    model.layers[-1].set_weights([weights, np.zeros(len(CLASSES), np.float32)])
    stats = _stats(conf)["features"]
    metadata = {"mode": "tabular", "backbone": None, "feature_set": SET_NAME, "features": list(declared),
                "catalog_columns": list(features.source_columns(declared)), "classes": list(CLASSES),
                "normalisation": {n: stats[n] for n in declared}, "image_size_px": None}
    blob = keras_model_bytes(model)
    return write_package(conf.lake.path("models"), version, model_keras=blob, tabular_keras=blob, metadata=metadata)


@pytest.mark.slow
def test_scoring_computes_the_packages_features_and_names_a_missing_column(psf_lake, spark):
    from dataclasses import replace

    from skyclass.score import ScoreError, score_catalog

    conf = psf_lake["conf"]
    path = _psf_only_package(conf, "psf-only")
    scoring = conf.replace(score=replace(conf.score, model=path, catalog="photometric", run_date="2026-01-02"))
    result = score_catalog(spark, scoring)
    predictions = spark.read.parquet(result.path).toPandas().set_index("objid")
    photometric = spark.read.parquet(conf.lake.table("photometric")).toPandas().set_index("objid")
    assert len(predictions) == len(photometric)
    # By hand, from the photometric table's own columns and the package's stored mean (not from skyclass.features).
    difference = photometric["psfmag_r"] - photometric["cmodelmag_r"]
    usable = (photometric["psfmag_r"].between(0, 40, inclusive="neither")
              & photometric["cmodelmag_r"].between(0, 40, inclusive="neither"))
    mean = _stats(conf)["features"]["psf_minus_cmodel_r"]["mean"]
    decided = usable & ((difference - mean).abs() > 0.05)
    want = np.where(difference > mean, "GALAXY", "STAR")
    got = predictions.loc[photometric.index, "predicted_class"]
    assert decided.sum() > 100
    assert (got[decided.to_numpy()] == pd.Series(want, index=photometric.index)[decided.to_numpy()]).all()
    assert set(got[decided.to_numpy()]) == {"GALAXY", "STAR"}  # the stand-in's unlabelled objects hold both

    # The same objects extracted with the preset config: no psf columns fetched, so the package cannot score them.
    from skyclass.extract import extract_photometric
    from skyclass.standin.server import StandinServer

    with StandinServer([psf_lake["photometric"]]).start() as server:
        plain = load_config(None, _settings(psf_lake["root"] / "plain", server.url, psf_lake["source"]))
        extract_photometric(spark, plain)
    unscorable = plain.replace(score=replace(plain.score, model=path, catalog="photometric"))
    with pytest.raises(ScoreError, match=r"uses catalog column\(s\) psfmag_u, cmodelmag_u.*extract the table again"):
        score_catalog(spark, unscorable)


@pytest.mark.slow
def test_training_records_the_declaration_and_learns_from_psf_minus_cmodel(psf_lake, spark):
    """Horovod training (tabular, 2 processes) on the psf table: the package records the declared features, in
    order, and the catalog columns they read, and its validation accuracy is far above chance."""
    from dataclasses import replace

    from skyclass.package import ModelPackage
    from skyclass.train import train_model

    conf = psf_lake["conf"]
    conf = conf.replace(train=replace(conf.train, mode="tabular", epochs=8, batch_size=32, num_proc=2,
                                      tabular_units=(32, 16), dropout=0.0, batch_norm=False, learning_rate=0.003,
                                      warmup_epochs=1, early_stopping_patience=8, version="psf-tab"))
    result = train_model(spark, conf)
    package = ModelPackage.load(result.path)
    declared = features.declared_features(conf.train)
    assert package.features == declared and package.feature_set == SET_NAME
    assert package.metadata["catalog_columns"] == list(features.source_columns(declared))
    assert package.load_model().input_shape == (None, len(declared))
    assert result.validation_accuracy >= 0.9
