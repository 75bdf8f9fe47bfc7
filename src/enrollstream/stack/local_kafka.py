"""A single-node Apache Kafka (KRaft, controller + broker) from the official jars on Maven Central."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from enrollstream.stack.errors import StackError
from enrollstream.stack.processes import free_port

KAFKA_VERSION = "3.9.1"
SCALA_VERSION = "2.13"


def kafka_libs_dir(cache_dir: Path) -> Path:
    return cache_dir / "kafka" / KAFKA_VERSION / "libs"


def fetch_kafka(cache_dir: Path) -> Path:
    """Resolve the broker's jars with Maven into the cache (once); return the directory of jars."""
    libs = kafka_libs_dir(cache_dir)
    done = libs / ".complete"
    if done.exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError("Maven (mvn) is not on PATH; it is needed once to fetch the Kafka jars")
    if libs.exists():
        shutil.rmtree(libs)  # a half-finished earlier fetch
    libs.mkdir(parents=True)
    pom = resources.files("enrollstream.stack").joinpath("kafka/pom.xml")
    with resources.as_file(pom) as pom_path:
        log = libs.parent / "maven.log"
        with log.open("w") as out:
            proc = subprocess.run(
                [
                    mvn,
                    "-B",
                    "-q",
                    "-f",
                    str(pom_path),
                    "dependency:copy-dependencies",
                    f"-DoutputDirectory={libs}",
                    f"-Dmaven.repo.local={cache_dir / 'm2'}",
                    "-DincludeScope=runtime",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
            )
    if proc.returncode != 0:
        raise StackError(f"Maven could not fetch Kafka {KAFKA_VERSION}; see {log}")
    if not any(libs.glob(f"kafka_{SCALA_VERSION}-{KAFKA_VERSION}.jar")):
        raise StackError(f"Maven finished but kafka_{SCALA_VERSION}-{KAFKA_VERSION}.jar is missing in {libs}")
    done.write_text(KAFKA_VERSION)
    return libs


@dataclass(frozen=True)
class KafkaProcessSpec:
    port: int
    controller_port: int
    data_dir: Path
    log_dir: Path

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


SERVER_PROPERTIES = """\
# Written by enrollstream's local stack. A single node that is both KRaft controller and broker,
# bound to 127.0.0.1, configured for transactions on one node.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={data_dir}
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
min.insync.replicas=1
group.initial.rebalance.delay.ms=0
log.retention.hours=-1
"""

LOG4J_PROPERTIES = """\
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.RollingFileAppender
log4j.appender.file.File={log_file}
log4j.appender.file.MaxFileSize=50MB
log4j.appender.file.MaxBackupIndex=2
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.state.change.logger=WARN
"""


def start_kafka(cache_dir: Path, stack_dir: Path) -> tuple[int, KafkaProcessSpec]:
    """Format a fresh KRaft log directory and start the broker; returns (pid, spec). Not yet ready."""
    libs = fetch_kafka(cache_dir)
    spec = KafkaProcessSpec(
        port=free_port(),
        controller_port=free_port(),
        data_dir=stack_dir / "kafka-data",
        log_dir=stack_dir / "logs",
    )
    if spec.data_dir.exists():
        shutil.rmtree(spec.data_dir)
    spec.data_dir.mkdir(parents=True)
    spec.log_dir.mkdir(parents=True, exist_ok=True)
    config = stack_dir / "kafka-server.properties"
    config.write_text(
        SERVER_PROPERTIES.format(port=spec.port, controller_port=spec.controller_port, data_dir=spec.data_dir)
    )
    log4j = stack_dir / "kafka-log4j.properties"
    log4j.write_text(LOG4J_PROPERTIES.format(log_file=spec.log_dir / "kafka-server.log"))
    java = shutil.which("java")
    if java is None:
        raise StackError("java is not on PATH; the local Kafka broker needs a JRE (17 or newer)")
    classpath = f"{libs}/*"
    jvm = [java, "-Xms256m", "-Xmx1g", f"-Dlog4j.configuration=file:{log4j}", "-cp", classpath]
    with (spec.log_dir / "kafka-format.log").open("w") as out:
        fmt = subprocess.run(
            [*jvm, "kafka.tools.StorageTool", "format", "-t", str(uuid.uuid4()), "-c", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if fmt.returncode != 0:
        raise StackError(
            f"formatting the KRaft log directory failed; see {spec.log_dir / 'kafka-format.log'}"
        )
    out = (spec.log_dir / "kafka-stdout.log").open("w")
    proc = subprocess.Popen(
        [*jvm, "-XX:+UseG1GC", "kafka.Kafka", str(config)],
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, so `stack down` stops exactly it
    )
    out.close()
    return proc.pid, spec
