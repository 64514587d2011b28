# One entry point for the order backbone. `make run` and `make test` work on a fresh machine.
.DEFAULT_GOAL := help
export UV_PYTHON_DOWNLOADS := never

SOURCES := contracts/src libs/pgstatements/src libs/servicekit/src services/order/src services/notifier/src services/audit/src deploy/local/devstack/src deploy/docgen/src \
           deploy/orderctl/src bench tests
# The AsyncAPI project's parser (npm), which validates the generated AsyncAPI documents.
ASYNCAPI_VALIDATOR := deploy/docgen/asyncapi-validate

.PHONY: help setup infra run test demo chaos bench lint format unit integration e2e docs kustomize deploy-check

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup: $(ASYNCAPI_VALIDATOR)/node_modules/.package-lock.json ## install tools, the Python workspace and the AsyncAPI validator (idempotent)
	@bash deploy/local/bootstrap.sh

# npm writes node_modules/.package-lock.json on install: reinstall only when the lock changed.
$(ASYNCAPI_VALIDATOR)/node_modules/.package-lock.json: $(ASYNCAPI_VALIDATOR)/package-lock.json
	@command -v npm >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm; }
	@cd $(ASYNCAPI_VALIDATOR) && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error

infra: setup ## start the local Kafka broker and PostgreSQL (or use the configured ones)
	@bash deploy/local/kafka.sh start
	@bash deploy/local/postgres.sh start

run: setup ## run the whole system locally, printing where it listens and an admin token
	@uv run python -m devstack

test: setup lint kustomize ## lint, type-check and run every test against real Kafka, PostgreSQL and SMTP
	uv run pytest

demo: setup ## run the live production test protocol end to end, with all services as processes
	uv run pytest tests/e2e/test_live_protocol.py -v -rA

chaos: setup ## break things on purpose under load, then fuzz ten times harder; prints the findings table
	uv run pytest tests/chaos -m chaos -v -s
	FUZZ_PROFILE=chaos uv run pytest tests/fuzz -v

bench: setup ## measure the system against its database and broker limits (BENCH_QUICK=1: ~3 min smoke run; BENCH_PROFILE=1: with py-spy)
	uv run python -m bench $(if $(BENCH_QUICK),--quick) $(if $(BENCH_PROFILE),--profile)

lint: setup ## ruff and mypy
	uv run ruff check .
	uv run ruff format --check .
	uv run mypy $(SOURCES)

format: setup ## apply ruff's formatting and safe fixes
	uv run ruff check --fix .
	uv run ruff format .

unit: setup ## the fast tests, no I/O
	uv run pytest tests/unit

integration: setup ## one service at a time against real infrastructure
	uv run pytest tests/integration

e2e: setup ## all three services as processes
	uv run pytest tests/e2e

docs: setup ## write docs/ from the code (OpenAPI, AsyncAPI, JSON Schema) and validate the AsyncAPI
	uv run python -m docgen --out docs
	node $(ASYNCAPI_VALIDATOR)/validate.mjs docs/asyncapi/*.yaml
kustomize: ## install the pinned kustomize into .cache/bin (go install), for deploy/k8s
	@bash deploy/k8s/install-kustomize.sh >/dev/null

deploy-check: setup kustomize ## check the Dockerfiles, compose file and Kubernetes manifests (no Docker needed)
	uv run pytest tests/deploy
