"""Parses Kafka records as CloudEvents with the CloudEvents Python SDK (its Kafka protocol
binding), for tests/cloudevents.rs: an implementation independent of the worker's.

Reads one record per line on stdin: {"headers": [[name, base64 value], ...], "key": base64 or
null, "value": base64}. Prints, per record, one JSON line: the event's attributes (extensions
included) and its data, or {"error": ...} when the SDK refuses the record.
"""

import base64
import json
import sys

from cloudevents.core.bindings.kafka import KafkaMessage, from_kafka
from cloudevents.core.formats.json import JSONFormat


def main() -> None:
    fmt = JSONFormat()
    for line in sys.stdin:
        record = json.loads(line)
        headers = {name: base64.b64decode(value) for name, value in record["headers"]}
        key = base64.b64decode(record["key"]) if record["key"] is not None else None
        value = base64.b64decode(record["value"])
        try:
            event = from_kafka(KafkaMessage(headers=headers, key=key, value=value), fmt)
        except Exception as e:  # the SDK's refusal is the finding
            print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
            continue
        attributes = {k: (v.isoformat() if hasattr(v, "isoformat") else v)
                      for k, v in event.get_attributes().items()}
        data = event.get_data()
        if isinstance(data, (bytes, bytearray)):
            data = data.decode("utf-8", errors="replace")
        if isinstance(data, str) and "json" in (event.get_datacontenttype() or ""):
            data = json.loads(data)
        print(json.dumps({"attributes": attributes, "data": data}))


if __name__ == "__main__":
    main()
