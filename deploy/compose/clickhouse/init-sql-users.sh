#!/bin/bash
# First start of the ClickHouse container: the read-only users the audit API's /v1/sql runs as, from
# sql-grants.sql (the output of `provline sql-grants` for compose's serve; tests/deploy/test_compose.py
# checks it still is), with the passwords from the environment.
set -euo pipefail
for variable in CLICKHOUSE_SQL_AUDITOR_PASSWORD CLICKHOUSE_SQL_ADMIN_PASSWORD; do
    if [[ ! "${!variable}" =~ ^[A-Za-z0-9-]+$ ]]; then
        echo "init-sql-users.sh: $variable may hold only letters, digits and -; choose another in deploy/compose/.env" >&2
        exit 1
    fi
done
sed -e "s/<password of provline_sql_auditor>/${CLICKHOUSE_SQL_AUDITOR_PASSWORD}/" \
    -e "s/<password of provline_sql_admin>/${CLICKHOUSE_SQL_ADMIN_PASSWORD}/" "${SQL_GRANTS:-/provline/sql-grants.sql}" \
    | clickhouse client --multiquery
