#!/bin/sh
# Builds an integration test binary and prints its path: testbin.sh PACKAGE TEST.
set -eu
cargo test -p "$1" --test "$2" --no-run --message-format=json 2>/dev/null | python3 -c '
import json, sys
name = sys.argv[1]
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == name:
        print(m["executable"])
' "$2"
