"""Shared test configuration. Server fixtures (redis_server, pg_server, redis_url, database_url,
settings) live in servers_fixtures.py."""

pytest_plugins = ["servers_fixtures", "service_fixtures", "kafka_fixtures", "cold_fixtures"]
