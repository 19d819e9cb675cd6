"""Install or run the real servers the tests use.

    python -m load.servers check               # one line per missing prerequisite (java, mvn, go), exit 2
    python -m load.servers install [NAME ...]  # install into the cache (default: all)
    python -m load.servers kafka               # run a Kafka broker in the foreground (Ctrl-C stops)
"""
from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

from load.servers import PrerequisiteMissing, cache_dir


def _installers() -> dict:
    """name -> install() of every server that is installed ahead of the tests."""
    from load.servers import kafka

    out = {"kafka": kafka.install}
    try:
        from load.servers import registry
        out["registry"] = registry.install
    except ImportError:
        pass
    try:
        from load.servers import weaviate
        out["weaviate"] = weaviate.install
    except ImportError:
        pass
    return out


def _prerequisites() -> list[str]:
    """What is missing, one sentence each."""
    import shutil

    from load.servers import java_bin

    missing = []
    try:
        java_bin()
    except PrerequisiteMissing as exc:
        missing.append(str(exc))
    else:
        from load.servers.registry import registry_java

        try:
            registry_java()  # Apicurio Registry 3.x needs Java 21+ (JAVA_HOME, PATH or /usr/lib/jvm)
        except PrerequisiteMissing as exc:
            missing.append(str(exc))
    if shutil.which("mvn") is None:
        missing.append("`mvn` (Maven 3.8+) not found on PATH: it fetches Apache Kafka and the schema registry "
                       "from Maven Central for the tests (Debian: apt-get install maven).")
    if shutil.which("go") is None:
        missing.append("`go` (Go 1.25+) not found on PATH: it builds the Weaviate server for the tests "
                       "(https://go.dev/doc/install).")
    return missing


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m load.servers", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("check", help="report missing prerequisites (java, mvn, go)")
    sp = sub.add_parser("install", help="install servers into the cache (default: all)")
    sp.add_argument("names", nargs="*", help="kafka, registry, weaviate")
    sp = sub.add_parser("kafka", help="run Apache Kafka on 127.0.0.1 in the foreground")
    sp.add_argument("--dir", help="log directory (default: a temporary one, deleted on exit)")
    args = ap.parse_args(argv)

    if args.cmd == "check":
        missing = _prerequisites()
        for m in missing:
            print(f"missing prerequisite: {m}", file=sys.stderr)
        return 2 if missing else 0
    if args.cmd == "install":
        missing = _prerequisites()
        if missing:
            for m in missing:
                print(f"missing prerequisite: {m}", file=sys.stderr)
            return 2
        installers = _installers()
        names = args.names or list(installers)
        unknown = [n for n in names if n not in installers]
        if unknown:
            print(f"unknown server(s): {', '.join(unknown)} (known: {', '.join(installers)})", file=sys.stderr)
            return 2
        for n in names:
            t = time.monotonic()
            try:
                where = installers[n]()
            except PrerequisiteMissing as exc:
                print(f"missing prerequisite: {exc}", file=sys.stderr)
                return 2
            print(f"{n}: ready in {where} ({time.monotonic() - t:.1f}s)", flush=True)
        print(f"cache: {cache_dir()}")
        return 0
    if args.cmd == "kafka":
        from load.servers.kafka import KafkaServer

        tmp = None if args.dir else tempfile.TemporaryDirectory(prefix="embedstream-kafka-")
        with KafkaServer(Path(args.dir or tmp.name)) as k:
            print(f"Apache Kafka {k.version} on {k.bootstrap} (log {k.log_path}); Ctrl-C stops", flush=True)
            signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
            try:
                while k.alive():
                    time.sleep(0.5)
            except KeyboardInterrupt:
                pass
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
