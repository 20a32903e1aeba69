#!/bin/sh
# One-shot, before the Temporal server starts (docker-compose.yml, service temporal-schema): create
# Temporal's two databases on temporal-db and bring their schemas to the version this admin-tools
# image ships. Safe on every `docker compose up`: an existing database is kept, `setup-schema -v
# 0.0` leaves a database that already has a schema alone, and `update-schema` applies only the
# versions it lacks, which is also how moving the pinned image to a newer release migrates them.
# temporal-sql-tool reads the password from SQL_PASSWORD.
set -eu

schema=/etc/temporal/schema/postgresql/v12

sql() {
    temporal-sql-tool --plugin postgres12 --ep "$POSTGRES_SEEDS" -p "${DB_PORT:-5432}" \
        -u "$POSTGRES_USER" "$@"
}

for db in temporal temporal_visibility; do
    if ! out=$(sql --db "$db" create 2>&1); then
        case "$out" in
            *"already exists"*) echo "database $db exists" ;;
            *) printf '%s\n' "$out" >&2; exit 1 ;;
        esac
    fi
done

sql --db temporal setup-schema -v 0.0
sql --db temporal update-schema -d "$schema/temporal/versioned"
sql --db temporal_visibility setup-schema -v 0.0
sql --db temporal_visibility update-schema -d "$schema/visibility/versioned"
echo "Temporal schemas are up to date"
