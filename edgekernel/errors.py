"""The root of every error edgekernel raises on purpose.

    EdgeKernelError
    ├── ProtocolError        protocol: a topic, envelope or payload that breaks the wire contract (.reason)
    ├── ConfigError          config: a config file that does not validate (.problems, each with file:line)
    ├── LinkError            link: the broker or another transport failed us
    │   ├── BrokerError      a private Mosquitto could not be found, started or stopped
    │   └── NotConnectedError  not connected (yet, or any more) when the operation needs it
    ├── StateError           device: the device's state file cannot be opened or written
    └── StoreError           gateway: the sample store cannot be opened or refused a write

Third-party errors (paho, SQLite, YAML, pydantic) are translated at the boundary with `raise … from`.
"""


class EdgeKernelError(Exception):
    """Base class of every error edgekernel raises on purpose."""
