# skyclass — see README.md. `make demo` and `make test` are all a fresh machine needs (Java 17 installed).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-done
# Horovod is compiled against the TensorFlow installed in the venv, with Gloo and without MPI/PyTorch/MXNet.
HOROVOD_ENV := HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_PYTORCH=1 \
	HOROVOD_WITHOUT_MXNET=1 CMAKE_POLICY_VERSION_MINIMUM=3.5

.PHONY: setup test test-fast demo bench bench-accuracy bench-images clean cluster-up cluster-down cluster-status \
	package airflow check-hats

setup: $(STAMP)

$(STAMP): requirements.txt setup.py
	@command -v java >/dev/null || { echo "Java 17 is required (apt-get install openjdk-17-jre-headless)"; exit 1; }
	@command -v cmake >/dev/null || { echo "installing cmake (needed to build Horovod)"; apt-get update -qq && apt-get install -y -qq cmake; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 'setuptools<70' wheel
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -c "import horovod.tensorflow" 2>/dev/null || \
		$(HOROVOD_ENV) $(PY) -m pip install --no-build-isolation --no-cache-dir 'horovod[spark]==0.28.1'
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -c "import horovod.tensorflow, petastorm, pyspark; from horovod.common.util import gloo_built; assert gloo_built()"
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

demo: setup
	$(VENV)/bin/skyclass demo

bench: setup
	$(PY) bench/run.py

bench-accuracy: setup
	$(PY) bench/accuracy.py

# A Spark standalone master and two workers on 127.0.0.1 (deploy/local-cluster.sh; state in .cluster/).
cluster-up: setup
	deploy/local-cluster.sh start

cluster-down:
	deploy/local-cluster.sh stop

cluster-status:
	deploy/local-cluster.sh status

# The executors' environment archive (once per requirements hash) and the code zip of this checkout.
package: setup
	deploy/package-venv.sh env
	deploy/package-venv.sh code

# Apache Airflow in its own environment (.venv-airflow) with a migrated SQLite AIRFLOW_HOME (.airflow-home), for
# running deploy/airflow_dag.py; built once (the Airflow tests reuse it).
airflow:
	deploy/airflow-env.sh

clean:
	rm -rf lake lake-real-images lake-real-images-input lake-real-images-models lake-real-images-reports models predictions reports bench-results spark-warehouse exports

# Reads a HATS export back with LSDB in its own environment (.venv-hats: built once by deploy/hats-venv.sh, cached).
check-hats: setup
	deploy/hats-venv.sh
	$(PY) -m pytest -q tests/test_hats_lsdb.py

# The image network on the REAL SDSS cutouts of ../shared/data/sdss/ and the three-way comparison on the real
# pairs (bench/images_bench.py; results in bench-results/images_bench.json, about 45 minutes on 2 cores).
bench-images: setup
	$(PY) bench/images_bench.py
