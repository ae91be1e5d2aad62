"""The root of every error edgekernel raises on purpose.

    EdgeKernelError
    ├── ProtocolError      edgekernel.protocol: a topic, envelope or payload that breaks the wire contract
    ├── ConfigError        edgekernel.config: a config file that does not validate (file:line each)
    ├── LinkError          edgekernel.link: the broker or another transport failed us
    │   └── BrokerError    a private Mosquitto could not be found, started or stopped
    └── StoreError         edgekernel.gateway: the sample store refused a write

Third-party errors (paho, SQLite, YAML, pydantic) are translated at the boundary with `raise … from`.
"""


class EdgeKernelError(Exception):
    """Base class of every error edgekernel raises on purpose."""
