#!/usr/bin/env bash
# Installs what the integration and browser tests need, when it is missing (idempotent, fast when
# everything is there):
#   - PostgreSQL, Redis, Chromium and ChromeDriver (and Java, Maven, npm, Go, CMake) from Debian's
#     packages (needs root);
#   - Apache Kafka's broker jars from Maven Central, resolved by Maven from .ci/kafka/pom.xml into a
#     cache outside the repository (${XDG_CACHE_HOME:-~/.cache}/marketfeed/kafka-<version>/libs).
# The tests start the servers themselves, on free loopback ports, in temporary directories.
set -euo pipefail
cd "$(dirname "$0")"

packages=()
command -v pg_ctl >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || packages+=(postgresql)
command -v redis-server >/dev/null 2>&1 || packages+=(redis-server)
command -v chromium >/dev/null 2>&1 || packages+=(chromium)
command -v chromedriver >/dev/null 2>&1 || packages+=(chromium-driver)
command -v java >/dev/null 2>&1 || packages+=(default-jre-headless)
command -v mvn >/dev/null 2>&1 || packages+=(maven)
command -v npm >/dev/null 2>&1 || packages+=(npm)
command -v go >/dev/null 2>&1 || packages+=(golang)
# tests/test_engine_isa.py builds the engine for other instruction sets with CMake directly.
command -v cmake >/dev/null 2>&1 || packages+=(cmake)

if ((${#packages[@]})); then
  if [[ $(id -u) -eq 0 ]]; then
    sudo=()
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo=(sudo)
  else
    echo "install-services: missing ${packages[*]}; run: sudo bash .ci/install-services.sh" >&2
    exit 0  # the tests skip (or, under CI=true, fail) and say what is missing
  fi
  echo "install-services: installing ${packages[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
  # Debian starts the packaged servers; the tests run their own, so stop these ones.
  "${sudo[@]}" service redis-server stop >/dev/null 2>&1 || true
  "${sudo[@]}" service postgresql stop >/dev/null 2>&1 || true
fi

# actionlint (GitHub workflow linter) from the Go module proxy, for tests/test_packaging.py.
bin="${XDG_CACHE_HOME:-$HOME/.cache}/marketfeed/bin"
if [[ ! -x "$bin/actionlint" ]] && command -v go >/dev/null 2>&1; then
  echo "install-services: building actionlint from the Go module proxy"
  GOBIN="$bin" go install github.com/rhysd/actionlint/cmd/actionlint@v1.7.7
fi

version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' kafka/pom.xml)
libs="${XDG_CACHE_HOME:-$HOME/.cache}/marketfeed/kafka-$version/libs"
if [[ ! -f "$libs/.complete" ]]; then
  echo "install-services: fetching Apache Kafka $version from Maven Central"
  mkdir -p "$libs"
  (cd kafka && mvn -q -B dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$libs")
  touch "$libs/.complete"
fi
