#!/bin/sh
# One-shot, once the Temporal server answers (docker-compose.yml, service temporal-setup): the
# namespace the deals run in and the deal's search attributes (models/search.py), which ops filter
# the Web UI's workflow list on. `l2c server` registers the same ones on the embedded dev server.
# Safe on every `docker compose up`: what exists is left as it is.
set -eu

address="${TEMPORAL_ADDRESS:-temporal:7233}"
namespace="${TEMPORAL_NAMESPACE:-default}"
retention="${TEMPORAL_RETENTION:-720h}"

# The frontend accepts connections a little before it serves, and a new namespace takes a few
# seconds to reach every service: each step is retried for about a minute.
retry() {
    tries=0
    until "$@"; do
        tries=$((tries + 1))
        if [ "$tries" -ge 30 ]; then
            echo "gave up after $tries tries: $*" >&2
            return 1
        fi
        sleep 2
    done
}

retry temporal operator cluster health --address "$address"

if temporal operator namespace describe --namespace "$namespace" --address "$address" >/dev/null 2>&1; then
    echo "namespace $namespace exists"
else
    retry temporal operator namespace create --namespace "$namespace" --retention "$retention" \
        --address "$address"
fi

search_attribute() {  # NAME TYPE
    if temporal operator search-attribute list --namespace "$namespace" --address "$address" \
        | grep -qw "$1"; then
        echo "search attribute $1 exists"
    else
        temporal operator search-attribute create --namespace "$namespace" --address "$address" \
            --name "$1" --type "$2"
    fi
}

retry search_attribute DealStage Keyword
retry search_attribute DealOwner Keyword
retry search_attribute DealAmount Double
retry search_attribute DealApprovers KeywordList
retry search_attribute DealStageSince Datetime
retry search_attribute DealOldestDue Datetime
echo "namespace $namespace is ready for deals"
