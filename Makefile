# Two entry points, both self-contained on a fresh machine with Python 3.11:
#   make demo   set up .venv and run a whole region (the main job)
#   make test   set up .venv and run lint + tests (the slow end-to-end ones: make test-slow)
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# label-studio-sdk pins an older numpy: it gets its own venv, used only to check our exports.
LS_VENV ?= .venv-ls
LS_STAMP := $(LS_VENV)/.installed
# kfp pins kubernetes<31 (the Airflow provider needs >=36): the Kubeflow pipeline compiles in its own venv.
KFP_VENV ?= .venv-kfp
KFP_STAMP := $(KFP_VENV)/.installed

.PHONY: demo test test-slow lint install clean repro airflow params
.DEFAULT_GOAL := demo

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "Installing into $(VENV) (about 2 minutes on a fresh machine)..."
	$(BIN)/python -m pip install -qq --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

$(LS_STAMP):
	@test -x $(LS_VENV)/bin/python || $(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install -qq --disable-pip-version-check 'label-studio-sdk==2.1.2'
	@touch $(LS_STAMP)

demo: $(STAMP)
	$(BIN)/damnet demo --out runs/demo

# Files derived from the step option declarations (components/spec.py, step_options.py):
# dags/damnet_ops/workflows.json (DAG Params, Kubeflow parameters) and params.yaml (dvc).
params: $(STAMP)
	$(BIN)/python -m components.workflows

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

$(KFP_STAMP):
	@test -x $(KFP_VENV)/bin/python || $(PYTHON) -m venv $(KFP_VENV)
	$(KFP_VENV)/bin/python -m pip install -qq --disable-pip-version-check 'kfp==2.17.3' 'kfp-kubernetes==2.17.3'
	@touch $(KFP_STAMP)

test: $(STAMP) $(LS_STAMP) $(KFP_STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# A real Label Studio server (tests/test_labelstudio.py's round trip) in its own venv: its pins
# (Django, numpy) are not ours. About a minute to install.
LABELSTUDIO_VENV ?= .venv-labelstudio
LABELSTUDIO_STAMP := $(LABELSTUDIO_VENV)/.installed

$(LABELSTUDIO_STAMP):
	@test -x $(LABELSTUDIO_VENV)/bin/python || $(PYTHON) -m venv $(LABELSTUDIO_VENV)
	$(LABELSTUDIO_VENV)/bin/python -m pip install -qq --disable-pip-version-check 'label-studio==1.23.2'
	@touch $(LABELSTUDIO_STAMP)

# The end-to-end runs marked slow (a region through both DAGs, dvc repro, S3 + mlflow server,
# the Label Studio round trip): about 10 more minutes on 2 cores. CI runs them after `make test`.
test-slow: $(STAMP) $(LABELSTUDIO_STAMP)
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

# Airflow's own UI (api-server, scheduler, dag-processor, triggerer; LocalExecutor on SQLite)
# with these DAGs on the demo's Airflow database (AIRFLOW_DIR, default runs/demo/airflow: the
# demo's DAG runs are there), store and MLflow database: http://127.0.0.1:8080 (user admin,
# password in AIRFLOW_DIR/simple_auth_manager_passwords.json.generated; stop with Ctrl-C).
# The three DAGs are unpaused (the nightly one then runs once a day). Every server binds
# 127.0.0.1: the API server by --host; Airflow 3.3 binds the scheduler's and triggerer's log
# servers to every interface with no setting for it, so they are not started
# (--skip-serve-logs): on one machine the UI reads task logs from AIRFLOW_DIR/logs.
# The LocalExecutor runs up to AIRFLOW_PARALLELISM tasks at once (default: the CPUs this
# machine gives us, at most 4), and every step gets its share of the CPUs as DAMNET_THREADS
# (torch's threads; without it two steps side by side each take every core and run ~9x slower).
AIRFLOW_DIR ?= runs/demo/airflow
airflow: $(STAMP)
	mkdir -p $(AIRFLOW_DIR)
	cpus=$$($(BIN)/python -c 'from damnet.threads import available_cpus; print(available_cpus())'); \
	parallelism=$${AIRFLOW_PARALLELISM:-$$(( cpus < 4 ? cpus : 4 ))}; \
	home="$(abspath $(AIRFLOW_DIR))"; \
	export AIRFLOW__CORE__PARALLELISM=$$parallelism DAMNET_THREADS=$${DAMNET_THREADS:-$$(( cpus / parallelism > 0 ? cpus / parallelism : 1 ))} \
	PATH="$(CURDIR)/$(BIN):$$PATH" AIRFLOW_HOME="$$home" \
	AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="sqlite:///$$home/airflow.db" AIRFLOW__CORE__EXECUTOR=LocalExecutor \
	AIRFLOW__CORE__DAGS_FOLDER="$(CURDIR)/dags" AIRFLOW__CORE__LOAD_EXAMPLES=False \
	AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=False \
	AIRFLOW__API__HOST=127.0.0.1 AIRFLOW__API__PORT=8080 PYTHONPATH="$(CURDIR)/dags" \
	AIRFLOW__API_AUTH__JWT_SECRET=$${AIRFLOW__API_AUTH__JWT_SECRET:-$$($(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(48))')} \
	PYTHONWARNINGS="ignore:GitWildMatchPattern,ignore:Using \`httpx\` with" \
	DAMNET_EXECUTION=local DAMNET_STORE="$(CURDIR)/runs/demo/store" \
	MLFLOW_TRACKING_URI="sqlite:///$(CURDIR)/runs/demo/mlflow.db"; \
	$(BIN)/airflow db migrate >/dev/null && \
	{ $(BIN)/airflow dags unpause --treat-dag-id-as-regex -y '^damnet_' >/dev/null 2>&1 || true; } && \
	trap 'kill 0' INT TERM; \
	$(BIN)/airflow scheduler --skip-serve-logs & $(BIN)/airflow triggerer --skip-serve-logs & \
	$(BIN)/airflow dag-processor & $(BIN)/airflow api-server --host 127.0.0.1 --port 8080 & \
	echo "Airflow on http://127.0.0.1:8080 (AIRFLOW_HOME $$home; user admin, password in" \
	     "$$home/simple_auth_manager_passwords.json.generated); Ctrl-C stops it"; \
	wait

clean:
	rm -rf $(VENV) $(LS_VENV) $(KFP_VENV) runs data/store data/mlflow.db mlruns .pytest_cache .ruff_cache

repro: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
