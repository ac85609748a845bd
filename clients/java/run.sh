#!/usr/bin/env bash
# Generates the grpc-java stubs from proto/ and compiles the client (Maven,
# its repository ~/.m2 outside the clone), then runs its check against a
# server:  run.sh HOST:PORT ADMIN_TOKEN
set -euo pipefail
cd "$(dirname "$0")"
source ../../scripts/tools.sh
MVN=(mvn -q -B -Dstyle.color=never)
"${MVN[@]}" compile dependency:build-classpath -Dmdep.outputFile=target/classpath.txt >&2
java -cp "target/classes:$(cat target/classpath.txt)" com.coupond.client.CouponClient "$@"
