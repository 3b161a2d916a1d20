"""Run the local Kafka broker in the foreground: ``python -m deploy.local.kafka --data-dir DIR [--brokers 3]``."""

from __future__ import annotations

import argparse
import signal
import threading

from deploy.local.kafka.broker import LocalKafka, LocalKafkaCluster


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", required=True, help="where the broker keeps its logs and data")
    parser.add_argument("--port", type=int, default=0, help="client listener port (default 0: any free one)")
    parser.add_argument("--controller-port", type=int, default=0,
                        help="KRaft controller listener port (default 0: any free one)")
    parser.add_argument("--brokers", type=int, default=1,
                        help="more than 1: a cluster of that many broker+controller nodes on free ports "
                             "(--port and --controller-port then do not apply)")
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if args.brokers > 1:
        if args.port or args.controller_port:
            parser.error("--port and --controller-port name one broker's ports; leave them out with --brokers")
        with LocalKafkaCluster(args.data_dir, brokers=args.brokers) as cluster:
            print(f"Kafka cluster of {args.brokers} nodes ready at {cluster.bootstrap} (data in {cluster.data_dir})",
                  flush=True)
            stop.wait()
        return
    with LocalKafka(args.data_dir, port=args.port, controller_port=args.controller_port) as kafka:
        print(f"Kafka broker ready at {kafka.bootstrap}, controller on 127.0.0.1:{kafka.controller_port} "
              f"(data in {kafka.data_dir})", flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
