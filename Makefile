# One entry point for the order backbone. `make run` and `make test` work on a fresh machine.
.DEFAULT_GOAL := help
export UV_PYTHON_DOWNLOADS := never

SOURCES := contracts/src services/order/src services/notifier/src services/audit/src deploy/local/devstack/src bench

.PHONY: help setup infra run test demo chaos bench lint format unit integration e2e

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup: ## install tools and the Python workspace (idempotent)
	@bash deploy/local/bootstrap.sh

infra: setup ## start the local Kafka broker and PostgreSQL (or use the configured ones)
	@bash deploy/local/kafka.sh start
	@bash deploy/local/postgres.sh start

run: setup ## run the whole system locally, printing where it listens and an admin token
	@uv run python -m devstack

test: setup lint ## lint, type-check and run every test against real Kafka, PostgreSQL and SMTP
	uv run pytest

demo: setup ## run the live production test protocol end to end, with all services as processes
	uv run pytest tests/e2e/test_live_protocol.py -v -rA

chaos: setup ## break things on purpose under load; prints the findings table
	uv run pytest tests/chaos -m chaos -v -s

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
